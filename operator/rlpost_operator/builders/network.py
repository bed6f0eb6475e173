"""Services and the job's NetworkPolicy."""

from __future__ import annotations

from typing import Any

from rlpost import api

from ..constants import (
    APP,
    BUFFER_PORT,
    ENGINE_PORT,
    INSTANCE_LABEL,
    MASTER_PORT,
    NAME_LABEL,
    RAY_NODE_LABEL,
    ROLE_BUFFER,
    ROLE_POOL,
    ROLE_ROLLOUT,
    ROLE_ROUTER,
    ROLE_TRAINER,
    ROLE_WORKER,
    ROUTER_PORT,
)
from . import raypool
from .common import JobRef, names, object_meta, selector, with_hash


def _service(
    ref: JobRef, name: str, role: str, port: int, headless: bool = False
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": selector(ref.name, role),
        "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
    }
    if headless:
        spec["clusterIP"] = "None"
        # Trainer ranks rendezvous before they are Ready; the trainer resolves engines
        # that are not Ready yet (they become Ready after its first weight push).
        spec["publishNotReadyAddresses"] = role in (ROLE_TRAINER, ROLE_WORKER, ROLE_ROLLOUT)
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": object_meta(ref, name, role),
            "spec": spec,
        }
    )


def build_services(ref: JobRef, spec: api.RLPostTrainJobSpec) -> list[dict[str, Any]]:
    n = names(ref.name)
    train_role = ROLE_WORKER if spec.mode == api.Mode.COLOCATED else ROLE_TRAINER
    out = [
        _service(ref, n[train_role], train_role, MASTER_PORT, headless=True),
        _service(ref, n["router"], ROLE_ROUTER, ROUTER_PORT),
        _service(ref, n["buffer"], ROLE_BUFFER, BUFFER_PORT),
    ]
    if spec.mode == api.Mode.DISAGGREGATED:
        out.append(_service(ref, n["rollout"], ROLE_ROLLOUT, ENGINE_PORT, headless=True))
    if raypool.enabled(spec):
        out.append(build_pool_service(ref))
    return out


def build_pool_service(ref: JobRef) -> dict[str, Any]:
    """`<job>-ray-head`: the pool head's GCS (workers join), Ray Client (the buffer), dashboard
    (`kubectl port-forward svc/<job>-ray-head 8265`) and metrics ports."""
    svc = _service(ref, names(ref.name)["ray-head"], ROLE_POOL, 0)
    svc["spec"]["selector"] = {**selector(ref.name, ROLE_POOL), RAY_NODE_LABEL: raypool.HEAD}
    svc["spec"]["ports"] = raypool.service_ports()
    return with_hash(svc)


def build_network_policy(ref: JobRef) -> dict[str, Any]:
    """Ingress to the job's pods only from the job's own pods (buffer, router, engines —
    in mode colocated the worker pods' engine containers, which the router reaches on port
    30000 —, trainer ranks, the reward pool's Ray head and workers: buffer -> head, head <-> workers
    on Ray's ports): another job's pods cannot reach its buffer, engine control ports or
    Ray cluster (which runs any code it is sent).
    The chart's namespace policy adds the operator and Prometheus (policies are a union)."""
    sel = {NAME_LABEL: APP, INSTANCE_LABEL: ref.name}
    return with_hash(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": object_meta(ref, f"{ref.name}-intra-job"),
            "spec": {
                "podSelector": {"matchLabels": sel},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": sel}}]}],
            },
        }
    )
