"""Identity, names, labels and content hashes shared by every builder; the pod groups
(Kueue podSets) of a job."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from rlpost import api

from ..constants import (
    APP,
    FIELD_MANAGER,
    HASH_ANNOTATION,
    INSTANCE_LABEL,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    ROLE_BUFFER,
    ROLE_LABEL,
    ROLE_POOL,
    ROLE_ROLLOUT,
    ROLE_ROUTER,
    ROLE_TRAINER,
    ROLE_WORKER,
)


@dataclass(frozen=True)
class JobRef:
    """The identity of a job: what owner references and names are made of."""

    name: str
    namespace: str
    uid: str

    def owner_reference(self, controller: bool = True) -> dict[str, Any]:
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": controller,
            "blockOwnerDeletion": True,
        }


@dataclass
class PodSetUpdate:
    """What admission adds to one podSet's pods: flavors + admission-check updates."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class StartInfo:
    """Everything the children need beyond the spec, decided by the protocol."""

    updates: dict[str, PodSetUpdate] = field(default_factory=dict)
    resume_step: int | None = None
    attempt: int = 0


# ---------------------------------------------------------------------------- names


def names(job: str) -> dict[str, str]:
    return {
        "workload": f"rlposttrainjob-{job}",
        # The job's one headless Service: every pod's subdomain (builders/network.py).
        "service": job,
        "config": f"{job}-config",
        "progress": f"{job}-progress",
        "token": f"{job}-token",
        "sa": f"{job}-rlpost",
        "role": f"{job}-rlpost",
        "trainer": f"{job}-trainer",
        "worker": f"{job}-worker",
        "rollout": f"{job}-rollout",
        "router": f"{job}-router",
        "buffer": f"{job}-buffer",
        "state": f"{job}-state",
        # The reward pool (builders/raypool.py): the head pod, the worker pods' prefix.
        "ray-head": f"{job}-ray-head",
        "ray-worker": f"{job}-ray-worker",
    }


def host(job: str, pod: str) -> str:
    """A pod's DNS name in its namespace: `<pod>.<job>` (hostname.subdomain, served for the
    job's headless Service, Ready or not)."""
    return f"{pod}.{names(job)['service']}"


def labels(job: str, role: str | None = None) -> dict[str, str]:
    out = {NAME_LABEL: APP, INSTANCE_LABEL: job, MANAGED_BY_LABEL: FIELD_MANAGER}
    if role:
        out[ROLE_LABEL] = role
    return out


def selector(job: str, role: str) -> dict[str, str]:
    return {NAME_LABEL: APP, INSTANCE_LABEL: job, ROLE_LABEL: role}


def spec_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """Stamp the object's content hash (compared before every apply: equal -> no write)."""
    obj.setdefault("metadata", {}).setdefault("annotations", {})
    obj["metadata"]["annotations"].pop(HASH_ANNOTATION, None)
    obj["metadata"]["annotations"][HASH_ANNOTATION] = spec_hash(obj)
    return obj


def object_meta(
    ref: JobRef, name: str, role: str | None = None, controller: bool = True
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ref.namespace,
        "labels": labels(ref.name, role),
        "ownerReferences": [ref.owner_reference(controller)],
    }


@dataclass(frozen=True)
class PodGroup:
    """One Kueue podSet: its name, pod count and GPUs per pod."""

    name: str
    count: int
    gpus: int


def pod_groups(spec: api.RLPostTrainJobSpec) -> list[PodGroup]:
    """disaggregated: trainer, rollout, router, buffer; colocated: worker, router, buffer
    (the worker pods hold trainer ranks AND an engine: GPUs requested once); then, with
    reward.pool.workers > 0, the reward pool: its Ray head and workers (builders/raypool.py)."""
    if spec.mode == api.Mode.COLOCATED:
        groups = [PodGroup(ROLE_WORKER, spec.trainer.replicas, spec.trainer.gpus_per_pod)]
    else:
        groups = [
            PodGroup(ROLE_TRAINER, spec.trainer.replicas, spec.trainer.gpus_per_pod),
            PodGroup(ROLE_ROLLOUT, spec.rollout.engines, spec.rollout.gpus_per_engine),
        ]
    groups += [PodGroup(ROLE_ROUTER, 1, 0), PodGroup(ROLE_BUFFER, 1, 0)]
    if spec.reward.pool.workers > 0:
        groups.append(PodGroup(ROLE_POOL, spec.reward.pool.workers + 1, 0))
    return groups


def expected_pods(spec: api.RLPostTrainJobSpec) -> int:
    return sum(g.count for g in pod_groups(spec))
