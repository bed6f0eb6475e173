"""The gang's pods, created by the operator itself (no StatefulSet, Deployment or ReplicaSet
in between): trainer or worker pods `<job>-trainer-<i>`, engine pods `<job>-rollout-<i>`,
`<job>-router`, `<job>-buffer`, and the reward pool's `<job>-ray-head` and
`<job>-ray-worker-<i>`. Created on admission, deleted on eviction/suspension/restart/finish.

Why pods and not workload controllers: each controller hop (Deployment -> ReplicaSet -> Pod,
StatefulSet -> Pod) is a round of writes by kube-controller-manager under its client rate
limit, and its status churn wakes the operator again (docs/benchmarks-operator.md). What the
controllers gave is kept here:
- stable identities: a pod's name is also its hostname, and its `subdomain` is the job's
  headless Service `<job>`, so `<job>-trainer-0.<job>` resolves as a StatefulSet pod's name
  would (the rendezvous address), and so do the engines, router, buffer and Ray head;
  `rlpost.dev/pod-index` is an indexed pod's ordinal;
- restarts: `restartPolicy: Always` (the kubelet restarts a container in place); a pod that
  is gone or ended (evicted, node lost) is created again by the next pass (protocol/gang.py).
"""

from __future__ import annotations

from typing import Any

from rlpost import api

from ..constants import (
    POD_INDEX_LABEL,
    RESUME_ANNOTATION,
    ROLE_BUFFER,
    ROLE_POOL,
    ROLE_ROLLOUT,
    ROLE_ROUTER,
    ROLE_TRAINER,
    ROLE_WORKER,
)
from . import raypool
from .common import JobRef, StartInfo, names, object_meta, with_hash
from .pods import pod_template


def build_pod(
    ref: JobRef,
    spec: api.RLPostTrainJobSpec,
    role: str,
    start: StartInfo,
    name: str,
    index: int | None = None,
    ray_node: str = raypool.WORKER,
) -> dict[str, Any]:
    """One pod of a role: the podSet's template (what Kueue admitted) with the pod's own
    name, hostname, ordinal and owner."""
    tmpl = pod_template(ref, spec, role, start, ray_node)
    meta = object_meta(ref, name, role)
    meta["labels"].update(tmpl["metadata"]["labels"])
    if index is not None:
        meta["labels"][POD_INDEX_LABEL] = str(index)
    if tmpl["metadata"].get("annotations"):
        meta["annotations"] = dict(tmpl["metadata"]["annotations"])
    body = dict(tmpl["spec"])
    body["restartPolicy"] = "Always"
    body["hostname"] = name
    body["subdomain"] = names(ref.name)["service"]
    return with_hash({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body})


def _indexed(
    ref: JobRef, spec: api.RLPostTrainJobSpec, role: str, count: int, start: StartInfo
) -> list[dict[str, Any]]:
    base = names(ref.name)[role]
    return [build_pod(ref, spec, role, start, f"{base}-{i}", i) for i in range(count)]


def build_training_pods(
    ref: JobRef, spec: api.RLPostTrainJobSpec, start: StartInfo
) -> list[dict[str, Any]]:
    role = ROLE_WORKER if spec.mode == api.Mode.COLOCATED else ROLE_TRAINER
    return _indexed(ref, spec, role, spec.trainer.replicas, start)


def build_pool_pods(
    ref: JobRef, spec: api.RLPostTrainJobSpec, start: StartInfo
) -> list[dict[str, Any]]:
    """The reward pool: a head pod and `workers` worker pods, or nothing (workers 0: rewards
    are scored in the buffer process)."""
    if not raypool.enabled(spec):
        return []
    n = names(ref.name)
    head = build_pod(ref, spec, ROLE_POOL, start, n["ray-head"], ray_node=raypool.HEAD)
    workers = [
        build_pod(ref, spec, ROLE_POOL, start, f"{n['ray-worker']}-{i}", i)
        for i in range(spec.reward.pool.workers)
    ]
    return [head, *workers]


def build_buffer_pod(ref: JobRef, spec: api.RLPostTrainJobSpec, start: StartInfo) -> dict[str, Any]:
    return build_pod(ref, spec, ROLE_BUFFER, start, names(ref.name)["buffer"])


def build_compute_children(
    ref: JobRef, spec: api.RLPostTrainJobSpec, start: StartInfo
) -> list[dict[str, Any]]:
    """The gang's pods: created on admission, deleted on eviction/suspension/restart/finish."""
    out = build_training_pods(ref, spec, start)
    if spec.mode == api.Mode.DISAGGREGATED:
        out += _indexed(ref, spec, ROLE_ROLLOUT, spec.rollout.engines, start)
    out.append(build_pod(ref, spec, ROLE_ROUTER, start, names(ref.name)["router"]))
    out.append(build_buffer_pod(ref, spec, start))
    return [*out, *build_pool_pods(ref, spec, start)]


def resume_step_of(pod: dict[str, Any]) -> int | None:
    """The resume step a running gang's pod was started with (its annotation)."""
    raw = (pod["metadata"].get("annotations") or {}).get(RESUME_ANNOTATION)
    return int(raw) if raw else None
