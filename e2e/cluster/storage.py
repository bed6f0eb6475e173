"""Storage on the real node: a default StorageClass with statically created local PVs.

Kubernetes' documented static-provisioning scheme: a StorageClass with the
`kubernetes.io/no-provisioner` provisioner and `WaitForFirstConsumer` binding, and
PersistentVolumes made ahead of time (here hostPath directories under the cluster's state
dir, pinned to the real node by nodeAffinity). kube-controller-manager's PV controller
binds each claim to a free volume once its first pod is scheduled, exactly as with a
dynamic provisioner, so the operator's per-job `<job>-state` PVC (no storageClassName:
the cluster default) and a user's data PVC bind without anything rlpost-specific.

Volumes use the Retain reclaim policy, so a PV whose claim is deleted is Released, not
reused. `ensure_local_volumes` adds fresh ones whenever fewer than `free` are Available.
The directories are mode 0777: hostPath volumes are not chowned by fsGroup, and the roles
run as uid 10001.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .localcluster import LocalCluster

STORAGE_CLASS = "rlpost-local"
PV_LABEL = "rlpost.dev/local-volume"


def volumes_dir(state: Path) -> Path:
    return state / "node" / "volumes"


def storage_class() -> dict:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Retain",
    }


def local_pv(name: str, path: Path, node_name: str, size: str = "10Gi") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {PV_LABEL: "true"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": STORAGE_CLASS,
            "hostPath": {"path": str(path), "type": "Directory"},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [node_name],
                                }
                            ]
                        }
                    ]
                }
            },
        },
    }


def new_volume_dir(state: Path, name: str) -> Path:
    d = volumes_dir(state) / name
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o777)
    return d


def ensure_local_volumes(cluster: LocalCluster, node_name: str, free: int = 6) -> None:
    """The default StorageClass and at least `free` Available local PVs."""
    pvs = cluster.get_json("pv", "-l", f"{PV_LABEL}=true")["items"]
    available = sum(1 for pv in pvs if pv.get("status", {}).get("phase") == "Available")
    docs = [storage_class()]
    for _ in range(max(0, free - available)):
        name = f"local-{uuid.uuid4().hex[:8]}"
        docs.append(local_pv(name, new_volume_dir(cluster.state, name), node_name))
    cluster.apply(docs)


def static_volume(cluster: LocalCluster, name: str, node_name: str, files: dict[str, bytes]):
    """A PV holding `files` (e.g. a data set) and the name to claim it by: a claim with
    `volumeName: <name>` and storageClassName rlpost-local binds to exactly this volume."""
    d = new_volume_dir(cluster.state, name)
    for rel, data in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(0o644)
    pv = local_pv(name, d, node_name)
    pv["metadata"]["labels"] = {"rlpost.dev/static-volume": "true"}
    cluster.apply(pv)
    return name
