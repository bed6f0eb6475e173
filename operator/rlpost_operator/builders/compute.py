"""The gang's compute children: trainer/worker StatefulSet, engine and router
Deployments, the buffer Pod. Created on admission, deleted on eviction/suspension/restart/finish."""

from __future__ import annotations

from typing import Any

from rlpost import api

from ..constants import (
    ATTEMPT_LABEL,
    RAY_NODE_LABEL,
    RESUME_ANNOTATION,
    ROLE_BUFFER,
    ROLE_POOL,
    ROLE_ROLLOUT,
    ROLE_ROUTER,
    ROLE_TRAINER,
    ROLE_WORKER,
)
from . import raypool
from .common import JobRef, StartInfo, names, object_meta, selector, with_hash
from .pods import pod_template


def build_training_statefulset(
    ref: JobRef, spec: api.RLPostTrainJobSpec, start: StartInfo
) -> dict[str, Any]:
    role = ROLE_WORKER if spec.mode == api.Mode.COLOCATED else ROLE_TRAINER
    name = names(ref.name)[role]
    tmpl = pod_template(ref, spec, role, start)
    meta = object_meta(ref, name, role)
    if start.resume_step is not None:
        meta["annotations"] = {RESUME_ANNOTATION: str(start.resume_step)}
    meta["labels"][ATTEMPT_LABEL] = str(start.attempt)
    return with_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": meta,
            "spec": {
                "serviceName": name,
                "replicas": spec.trainer.replicas,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": selector(ref.name, role)},
                "template": tmpl,
            },
        }
    )


def _deployment(
    ref: JobRef,
    spec: api.RLPostTrainJobSpec,
    role: str,
    replicas: int,
    start: StartInfo,
    ray_node: str | None = None,
) -> dict[str, Any]:
    """`ray_node`: the pool's head or worker Deployment (role reward-pool)."""
    name = names(ref.name)[f"ray-{ray_node}" if ray_node else role]
    meta = object_meta(ref, name, role)
    meta["labels"][ATTEMPT_LABEL] = str(start.attempt)
    match = selector(ref.name, role)
    if ray_node:
        meta["labels"][RAY_NODE_LABEL] = ray_node
        match[RAY_NODE_LABEL] = ray_node
    return with_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": match},
                "strategy": {"type": "Recreate"},
                "template": pod_template(ref, spec, role, start, ray_node or raypool.WORKER),
            },
        }
    )


def build_pool_deployments(
    ref: JobRef, spec: api.RLPostTrainJobSpec, start: StartInfo
) -> list[dict[str, Any]]:
    """The reward pool: a head Deployment (1 pod) and a worker Deployment (`workers` pods),
    or nothing (workers 0: rewards are scored in the buffer process)."""
    if not raypool.enabled(spec):
        return []
    return [
        _deployment(ref, spec, ROLE_POOL, 1, start, raypool.HEAD),
        _deployment(ref, spec, ROLE_POOL, spec.reward.pool.workers, start, raypool.WORKER),
    ]


def build_buffer_pod(ref: JobRef, spec: api.RLPostTrainJobSpec, start: StartInfo) -> dict[str, Any]:
    tmpl = pod_template(ref, spec, ROLE_BUFFER, start)
    meta = object_meta(ref, names(ref.name)["buffer"], ROLE_BUFFER)
    meta["labels"].update(tmpl["metadata"]["labels"])
    if tmpl["metadata"].get("annotations"):
        meta["annotations"] = dict(tmpl["metadata"]["annotations"])
    pod_spec_ = dict(tmpl["spec"])
    pod_spec_["restartPolicy"] = "Always"
    pod_spec_["hostname"] = names(ref.name)["buffer"]
    return with_hash({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec_})


def build_compute_children(
    ref: JobRef, spec: api.RLPostTrainJobSpec, start: StartInfo
) -> list[dict[str, Any]]:
    """The gang: created on admission, deleted on eviction/suspension/restart/finish."""
    out = [build_training_statefulset(ref, spec, start)]
    if spec.mode == api.Mode.DISAGGREGATED:
        out.append(_deployment(ref, spec, ROLE_ROLLOUT, spec.rollout.engines, start))
    out.append(_deployment(ref, spec, ROLE_ROUTER, 1, start))
    out.append(build_buffer_pod(ref, spec, start))
    return [*out, *build_pool_deployments(ref, spec, start)]
