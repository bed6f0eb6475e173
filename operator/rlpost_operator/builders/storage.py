"""Volumes and mounts: the job config, shared memory, model/data PVCs and the durable state
volume; the per-job state PVC.

The state volume holds the trainer's checkpoints and the buffer's samples: `checkpoint.pvc`
when set (mounted at /checkpoints, shared by jobs: each has its own directory), else the
PVC `<job>-state` the operator creates, owned by the job (kept across suspension, eviction
and gang restarts; deleted with the job). Only the pods that keep state mount it (trainer or
worker pods and the buffer): with ReadWriteOnce they must share a node, which the scheduler
arranges for node-bound volumes (local-path, hostPath); on multi-node clusters with
network block storage use `checkpoint.accessMode: ReadWriteMany` or a ReadWriteMany
`checkpoint.pvc`. Paths inside the mounts: rlpost.storage (one rule for every role).
"""

from __future__ import annotations

import posixpath
from typing import Any

from rlpost import api
from rlpost.storage import (
    CHECKPOINT_MOUNT,
    DATA_MOUNT,
    MODEL_MOUNT,
    STATE_MOUNT,
    cluster_state_dir,
)

from .common import JobRef, names, object_meta

CONFIG_MOUNT = "/etc/rlpost"

__all__ = [
    "CHECKPOINT_MOUNT",
    "CONFIG_MOUNT",
    "DATA_MOUNT",
    "MODEL_MOUNT",
    "STATE_MOUNT",
    "build_state_pvc",
    "checkpoint_dir",
    "pod_volumes",
    "state_claim",
    "state_dir",
]


def state_claim(ref: JobRef, spec: api.RLPostTrainJobSpec) -> str:
    """The PVC holding the job's state: checkpoint.pvc, else `<job>-state`."""
    return spec.checkpoint.pvc or names(ref.name)["state"]


def pod_volumes(
    ref: JobRef, spec: api.RLPostTrainJobSpec, shm: bool, state: bool = True
) -> tuple[list, list]:
    n = names(ref.name)
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": n["config"]}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
    ]
    if shm:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if spec.model.pvc:
        volumes.append(
            {
                "name": "model",
                "persistentVolumeClaim": {"claimName": spec.model.pvc, "readOnly": True},
            }
        )
        mounts.append({"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True})
    if spec.data.pvc:
        volumes.append(
            {
                "name": "data",
                "persistentVolumeClaim": {"claimName": spec.data.pvc, "readOnly": True},
            }
        )
        mounts.append({"name": "data", "mountPath": DATA_MOUNT, "readOnly": True})
    if state:
        claim = {"claimName": state_claim(ref, spec)}
        mount = CHECKPOINT_MOUNT if spec.checkpoint.pvc else STATE_MOUNT
        volumes.append({"name": "state", "persistentVolumeClaim": claim})
        mounts.append({"name": "state", "mountPath": mount})
    return volumes, mounts


def state_dir(ref: JobRef, spec: api.RLPostTrainJobSpec, role: str) -> str:
    """RLPOST_STATE_DIR of a role: `<the job's state directory>/<role>`."""
    return posixpath.join(cluster_state_dir(ref.name, spec), role)


def checkpoint_dir(ref: JobRef, spec: api.RLPostTrainJobSpec, role: str) -> str:
    """RLPOST_CHECKPOINT_DIR of the trainer: inside the state volume, whatever
    checkpoint.path says (a path outside the volume would not survive the pod)."""
    return posixpath.join(state_dir(ref, spec, role), "checkpoints")


def build_state_pvc(ref: JobRef, spec: api.RLPostTrainJobSpec) -> dict[str, Any] | None:
    """`<job>-state`, owned by the job; None when checkpoint.pvc names the user's own PVC.
    No storageClassName: the cluster's default class (or a static PV without a class)."""
    if spec.checkpoint.pvc:
        return None
    pvc_spec: dict[str, Any] = {
        "accessModes": [str(spec.checkpoint.access_mode)],
        "resources": {"requests": {"storage": spec.checkpoint.size}},
    }
    if spec.checkpoint.storage_class_name:
        pvc_spec["storageClassName"] = spec.checkpoint.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": object_meta(ref, names(ref.name)["state"]),
        "spec": pvc_spec,
    }
