"""Static PersistentVolumes for the jobs' state PVCs, for clusters without a provisioner.

The operator creates `<job>-state` (a PVC with no storageClassName unless the spec names one:
the cluster's default class). The kwok control plane has no volume provisioner and its fake
nodes mount nothing, yet the scheduler keeps a pod with an unbound PVC Pending. This binder
is the documented static-PV scheme of the e2e suites: for every Pending PVC labelled
app.kubernetes.io/name=rlpost it creates a hostPath PV of the PVC's size, access modes and
class, pre-bound to it through claimRef (uid included, so it binds to that PVC only), and
deletes the PVs it made at the end (reclaim policy Retain: nothing on a kwok node to clean).
A cluster with a real dynamic provisioner binds the PVCs itself; the binder then finds no
Pending PVC and does nothing.

Namespaces whose name starts with REAL_NS_PREFIX (e2e/incluster's tenants, on the real
node) are left alone: their PVCs bind to the real node's local PVs (e2e/cluster/storage.py),
which the roles (uid 10001) can write. The binders are session fixtures of the kwok suites
and still run when e2e/incluster does; a PV of theirs (a hostPath the kubelet makes as root,
mode 0755) once won the race for a real job's state PVC, and its buffer could not write.
"""

from __future__ import annotations

import contextlib
import threading

LABEL = "app.kubernetes.io/name=rlpost"
REAL_NS_PREFIX = "real-"
MARK = "rlpost.dev/e2e-static-pv"


def pv_for(pvc: dict, root: str = "/tmp/rlpost-e2e-pvs") -> dict:
    m = pvc["metadata"]
    spec = pvc["spec"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"rlpost-{m['uid']}", "labels": {MARK: "true"}},
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec["accessModes"],
            "storageClassName": spec.get("storageClassName") or "",
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": f"{root}/{m['namespace']}/{m['name']}", "type": ""},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": m["namespace"],
                "name": m["name"],
                "uid": m["uid"],
            },
        },
    }


class StaticPVBinder:
    def __init__(self, cluster, interval_s: float = 0.2):
        self.cluster = cluster
        self.interval_s = interval_s
        self.made: set[str] = set()
        self.held: set[tuple[str, str]] = set()  # (namespace, claim) left Pending for now
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="static-pvs")

    def sweep(self) -> int:
        pvcs = self.cluster.get_json("pvc", "-A", "-l", LABEL)["items"]
        made = 0
        for pvc in pvcs:
            if (pvc.get("status") or {}).get("phase") != "Pending" or pvc["spec"].get("volumeName"):
                continue
            if pvc["metadata"]["namespace"].startswith(REAL_NS_PREFIX):
                continue
            if (pvc["metadata"]["namespace"], pvc["metadata"]["name"]) in self.held:
                continue
            pv = pv_for(pvc)
            if pv["metadata"]["name"] in self.made:
                continue
            self.cluster.apply(pv)
            self.made.add(pv["metadata"]["name"])
            made += 1
        return made

    def hold(self, namespace: str, claim: str) -> None:
        """Leave this claim Pending (a PV controller that has not bound it yet)."""
        self.held.add((namespace, claim))

    def release(self, namespace: str, claim: str) -> None:
        self.held.discard((namespace, claim))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(Exception):  # a slow API server: try again next tick
                self.sweep()

    def start(self) -> StaticPVBinder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.cluster.kubectl("delete", "pv", "-l", f"{MARK}=true", "--wait=false", check=False)
