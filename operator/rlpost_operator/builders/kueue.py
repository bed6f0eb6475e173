"""The Kueue Workload of a job and the admission facts read back from it."""

from __future__ import annotations

from typing import Any

from rlpost import api

from ..constants import (
    HASH_ANNOTATION,
    KUEUE_GROUP,
    KUEUE_VERSION,
    QUEUE_LABEL,
)
from .common import JobRef, PodSetUpdate, names, object_meta, pod_groups, spec_hash
from .pods import pod_template


def build_workload(
    ref: JobRef, spec: api.RLPostTrainJobSpec, queue: str, priority: int | None = None
) -> dict[str, Any]:
    """ONE Workload for the whole gang: all podSets are admitted together or not at all."""
    full = [
        {"name": g.name, "count": g.count, "template": pod_template(ref, spec, g.name)}
        for g in pod_groups(spec)
    ]
    pod_sets = [{**ps, "template": kueue_template(ps["template"])} for ps in full]
    wl: dict[str, Any] = {
        "apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}",
        "kind": "Workload",
        # No finalizer (Kueue's jobframework adds resource-in-use): a Workload deleted goes
        # at once and Kueue frees its quota, while the operator stops the gang. With one, a
        # namespace being deleted would wait on the operator to write into it
        # (docs/DESIGN.md, "Workloads without a finalizer").
        "metadata": object_meta(ref, names(ref.name)["workload"]),
        "spec": {"queueName": queue, "podSets": pod_sets, "active": not spec.suspend},
    }
    if spec.priority_class_name:
        wl["spec"]["priorityClassRef"] = {
            "group": KUEUE_GROUP,
            "kind": "WorkloadPriorityClass",
            "name": spec.priority_class_name,
        }
        # Kueue's webhook wants the class's value next to the reference (jobframework
        # copies it the same way).
        wl["spec"]["priority"] = int(priority or 0)
    # The hash covers what is immutable in a Workload (podSets, queue, priority), not
    # `active`, which follows spec.suspend; the podSets with their whole pod templates, so
    # that any change to a pod group queues the gang again (and Workloads written before
    # the templates were cut keep their hash).
    immutable = {k: v for k, v in wl["spec"].items() if k not in ("active", "priority")}
    immutable["podSets"] = full
    wl["metadata"]["annotations"] = {HASH_ANNOTATION: spec_hash(immutable)}
    return wl


# What Kueue reads of a podSet's pod template: the requests (and the limits that default
# them, the runtime class's overhead, sidecars' restartPolicy), and where the pods may go
# (flavor assignment, node fit). Nothing else of the pod spec reaches the Workload.
KUEUE_POD_FIELDS = (
    "nodeSelector",
    "affinity",
    "tolerations",
    "priorityClassName",
    "runtimeClassName",
    "overhead",
    "topologySpreadConstraints",
    "resourceClaims",
)
KUEUE_CONTAINER_FIELDS = ("name", "resources", "restartPolicy")


def kueue_template(tmpl: dict[str, Any]) -> dict[str, Any]:
    """A pod template cut to what Kueue admits by (KUEUE_POD_FIELDS). The gang's pods are
    built from the whole template; the Workload carries a fifth of it, and every write and
    watch event of it (Kueue's, the operator's, the API server's) handles that much less."""
    pod = tmpl["spec"]
    spec: dict[str, Any] = {k: pod[k] for k in KUEUE_POD_FIELDS if k in pod}
    for key in ("initContainers", "containers"):
        if pod.get(key):
            spec[key] = [{k: c[k] for k in KUEUE_CONTAINER_FIELDS if k in c} for c in pod[key]]
    meta = tmpl.get("metadata") or {}
    # Kueue keeps only labels/annotations in a podSet template's metadata.
    return {"metadata": {k: meta[k] for k in ("labels", "annotations") if k in meta}, "spec": spec}


def podset_updates(
    workload: dict[str, Any], flavors: dict[str, dict[str, Any]]
) -> dict[str, PodSetUpdate]:
    """Per podSet: the assigned ResourceFlavors' nodeLabels/tolerations, then the admission
    checks' podSetUpdates (Kueue jobframework: podset.FromAssignment + FromUpdate)."""
    status = workload.get("status") or {}
    out: dict[str, PodSetUpdate] = {}
    for psa in (status.get("admission") or {}).get("podSetAssignments") or []:
        upd = out.setdefault(psa["name"], PodSetUpdate())
        seen: list[str] = []
        for flavor_name in (psa.get("flavors") or {}).values():
            if flavor_name in seen:
                continue
            seen.append(flavor_name)
            fspec = (flavors.get(flavor_name) or {}).get("spec") or {}
            upd.node_selector.update(fspec.get("nodeLabels") or {})
            for t in fspec.get("tolerations") or []:
                if t not in upd.tolerations:
                    upd.tolerations.append(t)
    for check in status.get("admissionChecks") or []:
        for psu in check.get("podSetUpdates") or []:
            upd = out.setdefault(psu["name"], PodSetUpdate())
            upd.labels.update(psu.get("labels") or {})
            upd.annotations.update(psu.get("annotations") or {})
            upd.node_selector.update(psu.get("nodeSelector") or {})
            for t in psu.get("tolerations") or []:
                if t not in upd.tolerations:
                    upd.tolerations.append(t)
    return out


def missing_flavors(workload: dict[str, Any], flavors: dict[str, dict[str, Any]]) -> list[str]:
    status = workload.get("status") or {}
    wanted = {
        f
        for psa in (status.get("admission") or {}).get("podSetAssignments") or []
        for f in (psa.get("flavors") or {}).values()
    }
    return sorted(wanted - set(flavors))


def job_queue_label(queue: str) -> dict[str, Any]:
    """The job's own metadata patch (a JSON merge patch): Kueue's queue-name label."""
    return {"metadata": {"labels": {QUEUE_LABEL: queue}}}
