"""Volumes and mounts: the job config, shared memory, model/data PVCs and the durable
state directory."""

from __future__ import annotations

from typing import Any

from rlpost import api

from .common import JobRef, names

CONFIG_MOUNT = "/etc/rlpost"
MODEL_MOUNT = "/models"
DATA_MOUNT = "/data"
CHECKPOINT_MOUNT = "/checkpoints"
STATE_MOUNT = "/state"


def pod_volumes(ref: JobRef, spec: api.RLPostTrainJobSpec, shm: bool) -> tuple[list, list]:
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
    if spec.checkpoint.pvc:
        volumes.append(
            {"name": "checkpoints", "persistentVolumeClaim": {"claimName": spec.checkpoint.pvc}}
        )
        mounts.append({"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT})
    else:
        volumes.append({"name": "state", "emptyDir": {}})
        mounts.append({"name": "state", "mountPath": STATE_MOUNT})
    return volumes, mounts


def state_dir(ref: JobRef, spec: api.RLPostTrainJobSpec, role: str) -> str:
    if spec.checkpoint.pvc:
        base = (
            f"{CHECKPOINT_MOUNT}/{spec.checkpoint.path.strip('/')}"
            if spec.checkpoint.path
            else (CHECKPOINT_MOUNT)
        )
        return f"{base}/{ref.name}/{role}"
    return f"{STATE_MOUNT}/{role}"
