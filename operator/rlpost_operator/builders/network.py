"""The job's headless Service and its NetworkPolicy."""

from __future__ import annotations

from typing import Any

from ..constants import (
    APP,
    INSTANCE_LABEL,
    NAME_LABEL,
)
from .common import JobRef, names, object_meta, with_hash


def build_service(ref: JobRef) -> dict[str, Any]:
    """ONE headless Service per job, `<job>`, selecting every pod of the job and publishing
    not-ready addresses; every pod has hostname = its name and subdomain = `<job>`, so the
    cluster DNS serves `<pod>.<job>` for each (builders/common.host): the trainer's
    rendezvous (`<job>-trainer-0.<job>`, resolved before it is Ready), each engine
    (`<job>-rollout-<i>.<job>`, resolved before its first weight push makes it Ready), the
    router, the buffer and the Ray head. No ports: it names pods, it does not balance.
    One Service instead of one per role: each Service is an EndpointSlice and an Endpoints
    object that kube-controller-manager writes on every pod change
    (docs/benchmarks-operator.md)."""
    sel = {NAME_LABEL: APP, INSTANCE_LABEL: ref.name}
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": object_meta(ref, names(ref.name)["service"]),
            "spec": {"clusterIP": "None", "selector": sel, "publishNotReadyAddresses": True},
        }
    )


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
