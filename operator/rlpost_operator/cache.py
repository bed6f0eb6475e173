"""The operator's in-memory view of the cluster: jobs and their children, trimmed to the
fields the protocol reads, fed by the watches (controller.py) and by the operator's own
write results.

Trimmed: a pod keeps its metadata and status (no spec), a Workload its `active` flag and
status (no podSets), the progress ConfigMap its data, the state PVC its class and phase,
everything else its metadata only. A Secret's token never sits here. At 1000 jobs this is
what keeps the operator's memory flat (docs/benchmarks-operator.md).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

from rlpost import api

from . import builders as b
from . import protocol
from .constants import ROLE_BUFFER, ROLE_LABEL

Key = tuple[str, str]  # (namespace, job name)


def _rv(obj: dict[str, Any]) -> int | None:
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


# What the cache keeps of an object: the fields the protocol reads, nothing else (a pod's
# spec, a Workload's podSets and a Secret's token are large or sensitive and never read).
META_KEPT = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "labels",
    "annotations",
    "creationTimestamp",
    "deletionTimestamp",
    "ownerReferences",
    "finalizers",
)
POD_STATUS_KEPT = ("phase", "reason", "message", "conditions", "containerStatuses")
CONTAINER_STATUS_KEPT = ("name", "ready", "restartCount", "state", "lastState")


def _strip(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    out: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind") or kind,
        "metadata": {k: meta[k] for k in META_KEPT if k in meta},
    }
    if kind == api.KIND:
        out["spec"] = obj.get("spec")
        out["status"] = obj.get("status")
    elif kind == "Workload":
        out["spec"] = {"active": (obj.get("spec") or {}).get("active", True)}
        out["status"] = obj.get("status")
    elif kind == "Pod":
        st = obj.get("status") or {}
        status = {k: st[k] for k in POD_STATUS_KEPT if k in st}
        if "containerStatuses" in status:
            status["containerStatuses"] = [
                {k: cs[k] for k in CONTAINER_STATUS_KEPT if k in cs}
                for cs in status["containerStatuses"]
            ]
        out["status"] = status
    elif kind == "PersistentVolumeClaim":  # whether it is bound, and by which class
        out["spec"] = {"storageClassName": (obj.get("spec") or {}).get("storageClassName")}
        out["status"] = {"phase": (obj.get("status") or {}).get("phase")}
    elif kind == "ConfigMap" and "data" in obj:
        job = protocol.job_of(obj)
        if job and meta.get("name") == b.names(job)["progress"]:
            out["data"] = obj["data"]  # the trainer's reports
    return out


class Cache:
    def __init__(self) -> None:
        self.jobs: dict[Key, dict[str, Any]] = {}
        self.objs: dict[Key, dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
        self.failed: dict[Key, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.flavors: dict[str, dict[str, Any]] = {}
        # StorageClass name -> volumeBindingMode; None until listed (or when not readable).
        self.binding_modes: dict[str, str] | None = None
        # Deleted uids never come back (a LIST answered before a DELETED event was handled
        # must not resurrect the object), and entries only the startup LIST has seen are
        # dropped unless a watch confirms them (deleted between that LIST and the watch's).
        self.gone: set[str] = set()
        self.unconfirmed: set[tuple[str, str, str, str]] = set()

    def _uid_gone(self, obj: dict[str, Any]) -> bool:
        return obj["metadata"].get("uid") in self.gone

    def _mark(self, slot: tuple[str, str, str, str], listed: bool) -> None:
        if listed:
            self.unconfirmed.add(slot)
        else:
            self.unconfirmed.discard(slot)

    def expire_unconfirmed(self) -> set[Key]:
        keys: set[Key] = set()
        for kind, ns, name, job in self.unconfirmed:
            if kind == api.KIND:
                if self.jobs.pop((ns, name), None) is not None:
                    keys.add((ns, name))
            elif self.objs.get((ns, job), {}).pop((kind, name), None) is not None:
                keys.add((ns, job))
        self.unconfirmed.clear()
        return keys

    @staticmethod
    def _newer(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
        a, c = _rv(old) if old else None, _rv(new)
        return a is None or c is None or c >= a

    @staticmethod
    def _changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
        """Newer than what is cached. Equal versions are the echo of the operator's own
        write (its response was cached already) or a relist: nothing to reconcile."""
        a, c = _rv(old) if old else None, _rv(new)
        return a is None or c is None or c > a

    def put_job(self, obj: dict[str, Any], listed: bool = False) -> bool:
        """Cache a job; True when it changed what the cache knew."""
        if self._uid_gone(obj):
            return False
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        self._mark((api.KIND, key[0], key[1], key[1]), listed)
        old = self.jobs.get(key)
        if self._newer(old, obj):
            self.jobs[key] = _strip(api.KIND, obj)
        return self._changed(old, obj)

    def drop_job(self, obj: dict[str, Any], unwatched: tuple[str, ...] = ()) -> None:
        """The job is gone; so are its children of the `unwatched` kinds (its owner
        reference lets the garbage collector delete them; no watch would tell)."""
        self.gone.add(obj["metadata"].get("uid"))
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.jobs.pop(key, None)
        objs = self.objs.get(key) or {}
        for slot in [s for s in objs if s[0] in unwatched]:
            del objs[slot]

    def resync(
        self, kind: str, ns: str | None, items: list[dict[str, Any]], list_rv: int | None
    ) -> set[Key]:
        """Make the cache's `kind` children in `ns` (None: all) what a LIST answered at
        resourceVersion `list_rv` saw: add what it lacks, drop what the LIST no longer
        has (unless written after it). The jobs whose children changed."""
        changed: set[Key] = set()
        seen: set[tuple[Key, tuple[str, str]]] = set()
        for obj in items:
            job = protocol.job_of(obj)
            if not job:
                continue
            key = (obj["metadata"]["namespace"], job)
            slot = (kind, obj["metadata"]["name"])
            seen.add((key, slot))
            old = self.objs[key].get(slot)
            if old is None or self._newer(old, obj):
                self.objs[key][slot] = _strip(kind, obj)
            if old is None:
                changed.add(key)
        for key, objs in self.objs.items():
            if ns is not None and key[0] != ns:
                continue
            for slot in [s for s in objs if s[0] == kind and (key, s) not in seen]:
                rv = _rv(objs[slot])
                if rv is not None and list_rv is not None and rv > list_rv:
                    continue  # written after the LIST was answered
                del objs[slot]
                changed.add(key)
        return changed

    def put(self, kind: str, obj: dict[str, Any], listed: bool = False) -> Key | None:
        """Cache a child; its job's key when it changed what the cache knew, else None."""
        job = protocol.job_of(obj)
        if not job or self._uid_gone(obj):
            return None
        key = (obj["metadata"]["namespace"], job)
        slot = (kind, obj["metadata"]["name"])
        self._mark((kind, key[0], slot[1], job), listed)
        old = self.objs[key].get(slot)
        if self._newer(old, obj):
            self.objs[key][slot] = _strip(kind, obj)
        role = obj["metadata"].get("labels", {}).get(ROLE_LABEL)
        # A failed pod of the gang is remembered even after its controller deletes it
        # (training pods: the gang restarts; others: counted in status.roleRestarts).
        if kind == "Pod" and role in protocol.COMPUTE_ROLES and protocol.pod_failure(obj):
            uid = obj["metadata"].get("uid", obj["metadata"]["name"])
            self.failed[key][uid] = _strip(kind, obj)
        return key if self._changed(old, obj) else None

    def drop(self, kind: str, obj: dict[str, Any]) -> Key | None:
        job = protocol.job_of(obj)
        if not job:
            return None
        key = (obj["metadata"]["namespace"], job)
        self.gone.add(obj["metadata"].get("uid"))
        cur = self.objs[key].get((kind, obj["metadata"]["name"]))
        if cur is not None and cur["metadata"].get("uid") == obj["metadata"].get("uid"):
            del self.objs[key][(kind, obj["metadata"]["name"])]
        return key

    def gang_to_make(self, key: Key) -> bool:
        """Whether a pass would make pods of the job's gang: none is cached, or the pods
        held until its state claim bound (the buffer mounts it) can be made now, the claim
        being Bound and no buffer pod cached."""
        objs = self.objs.get(key) or {}
        pods = [o for (kind, _), o in objs.items() if kind == "Pod"]
        if not pods:
            return True
        if any(o["metadata"].get("labels", {}).get(ROLE_LABEL) == ROLE_BUFFER for o in pods):
            return False
        pvc = objs.get(("PersistentVolumeClaim", b.names(key[1])["state"]))
        return pvc is not None and protocol.claim_bound(pvc)

    def observed(self, key: Key) -> protocol.Observed:
        job = copy.deepcopy(self.jobs[key])
        objs = self.objs.get(key, {})
        wl_name = b.names(key[1])["workload"]
        workload = objs.get(("Workload", wl_name))
        # Read-only for the protocol: no copies (the job and Workload are copied, as the
        # protocol builds their new status from them).
        children = [o for (k, _), o in objs.items() if k != "Workload"]
        pods = [o for o in children if o.get("kind") == "Pod"]
        live_uids = {p["metadata"].get("uid") for p in pods}
        attempt = str((job.get("status") or {}).get("restarts") or 0)
        tomb = self.failed.get(key, {})
        failed_pods = []
        for uid in list(tomb):
            if tomb[uid]["metadata"].get("labels", {}).get("rlpost.dev/attempt") != attempt:
                del tomb[uid]  # an older attempt: already handled
            elif uid not in live_uids:
                failed_pods.append(tomb[uid])
        return protocol.Observed(
            job=job,
            workload=copy.deepcopy(workload) if workload else None,
            children=children,
            pods=pods,
            failed_pods=failed_pods,
            flavors=self.flavors,
            binding_modes=self.binding_modes,
        )

    def phases(self):
        for (ns, _), job in list(self.jobs.items()):
            yield ns, (job.get("status") or {}).get("phase") or "Pending"
