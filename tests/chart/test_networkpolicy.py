"""The chart's NetworkPolicies, evaluated with Kubernetes' NetworkPolicy semantics (ingress:
a pod selected by any policy takes only what the union of those policies allows) over pods
labelled the way the operator labels a job's pods.

The local control plane has no CNI, so nothing enforces these there; the e2e suite checks
that the API server accepts them. This evaluator covers what the rendered selectors mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from e2e.platform.chart import by_kind, render


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict = field(default_factory=dict)


NS_LABELS = {
    "team-a": {"kubernetes.io/metadata.name": "team-a"},
    "team-b": {"kubernetes.io/metadata.name": "team-b"},
    "monitoring": {"kubernetes.io/metadata.name": "monitoring"},
}


def matches(selector: dict, labels: dict) -> bool:
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []):
        op, key, vals = e["operator"], e["key"], e.get("values", [])
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def peer_matches(peer: dict, policy_ns: str, src: Pod) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        if not matches(peer["namespaceSelector"], NS_LABELS[src.namespace]):
            return False
    elif src.namespace != policy_ns:
        return False
    return "podSelector" not in peer or matches(peer["podSelector"], src.labels)


def allowed(policies: list[dict], src: Pod, dst: Pod, port: int) -> bool:
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == dst.namespace
        and "Ingress" in p["spec"]["policyTypes"]
        and matches(p["spec"]["podSelector"], dst.labels)
    ]
    if not selecting:
        return True  # not isolated
    for p in selecting:
        for rule in p["spec"].get("ingress", []):
            ports = [x["port"] for x in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if not peers or any(peer_matches(x, dst.namespace, src) for x in peers):
                return True
    return False


def job_pod(ns: str, job: str, role: str) -> Pod:
    return Pod(
        ns,
        {
            "app.kubernetes.io/name": "rlpost",
            "app.kubernetes.io/instance": job,
            "rlpost.dev/role": role,
        },
    )


OPERATOR = Pod(
    "team-a", {"app.kubernetes.io/name": "rlpost-operator", "app.kubernetes.io/instance": "rlpost"}
)
BUFFER, ROUTER, ENGINE = 8000, 30000, 30000  # operator/rlpost_operator/constants.py


@pytest.fixture(scope="module")
def namespace_mode():
    return [
        d
        for d in by_kind(
            render(values={"networkPolicy": {"enabled": True, "mode": "namespace"}}),
            "NetworkPolicy",
        )
    ]


@pytest.fixture(scope="module")
def job_mode():
    return [d for d in by_kind(render(), "NetworkPolicy")]  # the chart's default


def test_other_tenants_and_foreign_pods_cannot_reach_job_ports(namespace_mode):
    buffer = job_pod("team-a", "j1", "buffer")
    for port in (BUFFER, ROUTER, ENGINE):
        assert not allowed(namespace_mode, job_pod("team-b", "j1", "trainer"), buffer, port)
        assert not allowed(namespace_mode, Pod("team-a", {"app": "debug-shell"}), buffer, port)
        assert not allowed(
            namespace_mode, Pod("team-b", {}), job_pod("team-a", "j1", "router"), port
        )


def test_job_pods_reach_each_other_and_operator_and_prometheus_scrape(namespace_mode):
    trainer = job_pod("team-a", "j1", "trainer")
    assert allowed(namespace_mode, trainer, job_pod("team-a", "j1", "buffer"), BUFFER)
    assert allowed(
        namespace_mode, job_pod("team-a", "j1", "buffer"), job_pod("team-a", "j1", "router"), ROUTER
    )
    assert allowed(namespace_mode, OPERATOR, job_pod("team-a", "j1", "buffer"), BUFFER)
    prom = Pod("monitoring", {"app": "prometheus"})
    assert allowed(namespace_mode, prom, job_pod("team-a", "j1", "buffer"), 8000)
    assert not allowed(namespace_mode, prom, job_pod("team-a", "j1", "buffer"), 12345)
    # The operator pod itself: only its metrics port, only from monitoring.
    assert allowed(namespace_mode, prom, OPERATOR, 8080)
    assert not allowed(namespace_mode, job_pod("team-a", "j1", "trainer"), OPERATOR, 8080)


def test_namespace_mode_does_not_isolate_jobs_of_one_namespace(namespace_mode):
    """The limit of a chart-only policy, stated as a test: NetworkPolicy cannot say
    "same instance label as me", so per-job isolation needs the per-job policy (job mode)."""
    assert allowed(
        namespace_mode,
        job_pod("team-a", "j2", "trainer"),
        job_pod("team-a", "j1", "buffer"),
        BUFFER,
    )


def per_job_policy(namespace: str, job: str) -> dict:
    """The per-job NetworkPolicy the operator creates with every job."""
    from rlpost_operator.builders import JobRef, build_network_policy

    return build_network_policy(JobRef(name=job, namespace=namespace, uid="u-" + job))


def test_job_mode_with_per_job_policies_isolates_jobs(job_mode):
    pols = job_mode + [per_job_policy("team-a", "j1"), per_job_policy("team-a", "j2")]
    j1_buffer = job_pod("team-a", "j1", "buffer")
    assert allowed(pols, job_pod("team-a", "j1", "trainer"), j1_buffer, BUFFER)
    assert allowed(
        pols, job_pod("team-a", "j1", "buffer"), job_pod("team-a", "j1", "router"), ROUTER
    )
    assert allowed(
        pols, job_pod("team-a", "j1", "router"), job_pod("team-a", "j1", "rollout"), ENGINE
    )
    assert not allowed(pols, job_pod("team-a", "j2", "trainer"), j1_buffer, BUFFER)
    assert not allowed(
        pols, job_pod("team-a", "j2", "buffer"), job_pod("team-a", "j1", "rollout"), ENGINE
    )
    assert not allowed(pols, job_pod("team-b", "j1", "trainer"), j1_buffer, BUFFER)
    assert allowed(pols, OPERATOR, j1_buffer, BUFFER)
    # Without its per-job policy a job's pods take nothing from each other (default deny).
    assert not allowed(
        job_mode, job_pod("team-a", "j3", "trainer"), job_pod("team-a", "j3", "buffer"), BUFFER
    )


def test_policies_in_every_watched_namespace():
    docs = render(values={"watch": {"clusterWide": False, "namespaces": ["team-a", "team-a-dev"]}})
    nss = sorted(
        d["metadata"]["namespace"]
        for d in by_kind(docs, "NetworkPolicy")
        if d["metadata"]["name"].endswith("-jobs")
    )
    assert nss == ["team-a", "team-a-dev"]
    assert not by_kind(
        render(values={"networkPolicy": {"enabled": False, "mode": "namespace"}}), "NetworkPolicy"
    )


RAY_GCS, RAY_CLIENT, RAY_METRICS = 6379, 10001, 8080  # operator/rlpost_operator/constants.py


def pool_pod(ns: str, job: str, node: str) -> Pod:
    """A reward-pool pod as the operator labels it (builders/raypool.py)."""
    pod = job_pod(ns, job, "reward-pool")
    return Pod(ns, {**pod.labels, "rlpost.dev/ray-node": node})


def test_reward_pool_takes_its_job_only_and_prometheus_scrapes_it(job_mode):
    """buffer -> head (Ray Client), worker -> head (GCS), head -> worker (raylet ports Ray
    picks itself): the per-job policy opens them to the job's own pods; another job's pods
    cannot reach a Ray cluster that runs any code it is sent; Prometheus scrapes Ray's
    metrics port and nothing else of it."""
    pols = job_mode + [per_job_policy("team-a", "j1"), per_job_policy("team-a", "j2")]
    head, worker = pool_pod("team-a", "j1", "head"), pool_pod("team-a", "j1", "worker")
    assert allowed(pols, job_pod("team-a", "j1", "buffer"), head, RAY_CLIENT)
    assert allowed(pols, worker, head, RAY_GCS)
    assert allowed(pols, head, worker, 40123)
    assert not allowed(pols, job_pod("team-a", "j2", "buffer"), head, RAY_CLIENT)
    assert not allowed(pols, pool_pod("team-a", "j2", "worker"), head, RAY_GCS)
    assert not allowed(pols, job_pod("team-b", "j1", "buffer"), head, RAY_CLIENT)
    prom = Pod("monitoring", {"app": "prometheus"})
    for pod in (head, worker):
        assert allowed(pols, prom, pod, RAY_METRICS)
        assert not allowed(pols, prom, pod, RAY_GCS)


def test_pod_monitor_scrapes_the_reward_pool():
    pm = by_kind(render(values={"metrics": {"podMonitor": {"enabled": True}}}), "PodMonitor")[0]
    (expr,) = pm["spec"]["selector"]["matchExpressions"]
    assert "reward-pool" in expr["values"]
    assert "metrics" in [e["port"] for e in pm["spec"]["podMetricsEndpoints"]]
