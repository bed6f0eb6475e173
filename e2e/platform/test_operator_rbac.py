"""Must-show 2, the operator half: `python -m rlpost_operator` authenticated only with the
chart ServiceAccount's token (TokenRequest) runs a job through Kueue end to end in its
tenant's namespace, so the chart's RBAC is enough; it never touches the other tenant.

(The token's 403s are in test_helm_tenants.py.)"""

from __future__ import annotations

import urllib.request

import pytest
import yaml

from e2e.platform.chart import REPO

pytestmark = pytest.mark.cluster

EXAMPLE = REPO / "examples" / "copy-first-letter.yaml"


def rljob(name: str, ns: str, queue: str) -> dict:
    job = yaml.safe_load(EXAMPLE.read_text())
    job["metadata"] = {"name": name, "namespace": ns}
    job["spec"]["queueName"] = queue
    job["spec"]["trainer"].update(gpusPerPod=1)
    job["spec"]["rollout"].update(engines=1, gpusPerEngine=1)
    job["spec"]["data"]["prompts"] = "/data/copy-first-letter.jsonl"
    return job


def phase(cluster, name: str, ns: str) -> str | None:
    return cluster.get_json("rljob", name, "-n", ns).get("status", {}).get("phase")


def owned_by(objs: list[dict], name: str) -> list[dict]:
    return [
        o
        for o in objs
        if any(r.get("name") == name for r in o["metadata"].get("ownerReferences", []))
    ]


def cleanup(request, cluster, name: str, ns: str) -> None:
    request.addfinalizer(
        lambda: cluster.kubectl("delete", "rljob", name, "-n", ns, "--wait=false", check=False)
    )


def test_operator_on_the_sa_token_runs_a_job_through_kueue(cluster, platform, operator_a, request):
    ns, name = platform.a, "rbac-job"
    cleanup(request, cluster, name, ns)
    cluster.apply(rljob(name, ns, platform.a))

    # 120 s: kopf, denied the cluster-wide namespace list it tries first, retries for ~55 s
    # before serving the exact namespaces (see the log assertion below).
    wl = cluster.wait_for(
        "a Workload owned by the job",
        lambda: owned_by(cluster.get_json("workloads", "-n", ns)["items"], name),
        timeout=120,
    )[0]
    assert wl["spec"]["queueName"] == platform.a
    cluster.wait_for(
        "the job Admitted/Running", lambda: phase(cluster, name, ns) in ("Admitted", "Running"), 90
    )
    # The children the operator created with nothing but the chart's RBAC (the gang is the
    # operator's own pods: no StatefulSet or Deployment, no apps/* verbs in the chart).
    for kind in ("pod", "service", "configmap", "secret",
                 "serviceaccount", "role", "rolebinding"):  # fmt: skip
        got = cluster.wait_for(
            f"the job's {kind}s",
            lambda kind=kind: owned_by(cluster.get_json(kind, "-n", ns)["items"], name),
            timeout=60,
        )
        assert got
    # Kueue's flavor reached the pods: GPU pods land on the admitted GPU kind's nodes.
    job = cluster.get_json("rljob", name, "-n", ns)
    assert job["status"]["admission"]["clusterQueue"] == platform.a
    pods = owned_by(cluster.get_json("pod", "-n", ns)["items"], name)
    (trainer,) = [p for p in pods if p["metadata"]["name"] == f"{name}-trainer-0"]
    node_sel = trainer["spec"].get("nodeSelector", {})
    assert node_sel.get("rlpost.dev/gpu-kind") in ("a", "b"), node_sel

    # Nothing the operator asked for was refused (its own API counter, and its log).
    with urllib.request.urlopen(operator_a.metrics_url, timeout=5) as r:
        text = r.read().decode()
    refused = [
        ln for ln in text.splitlines() if "rlpost_api_requests_total{" in ln and 'code="403"' in ln
    ]
    assert not [ln for ln in refused if not ln.endswith(" 0.0")], refused
    # Nor anything kopf asked for: with exact namespaces the operator must not need a
    # cluster-wide namespace list (kopf: settings.scanning.disabled).
    forbidden = [ln for ln in operator_a.log_text().splitlines() if "Forbidden" in ln]
    assert not forbidden, "\n".join(forbidden[:3])


def test_operator_leaves_the_other_tenant_alone(cluster, platform, operator_a, request):
    """A job in tenant b's namespace: tenant a's operator neither sees nor touches it."""
    ns, name = platform.b, "not-mine"
    ours = "rbac-probe-a"
    cleanup(request, cluster, name, ns)
    cleanup(request, cluster, ours, platform.a)
    cluster.apply(rljob(name, ns, platform.b))
    # Give the operator time in which it would have acted (it acts within seconds above).
    cluster.apply(rljob(ours, platform.a, platform.a))
    cluster.wait_for(
        "tenant a's own job handled",
        lambda: phase(cluster, ours, platform.a) not in (None, "Pending"),
        timeout=60,
    )
    assert phase(cluster, name, ns) is None
    assert not owned_by(cluster.get_json("workloads", "-n", ns)["items"], name)


def test_job_over_the_tenant_quota_stays_queued_with_kueues_reason(
    cluster, platform, operator_a, request
):
    """16 trainer GPUs in one podSet: team-a may hold at most 10 of one GPU kind
    (8 nominal + what team-b lends), so Kueue never admits it, and the job says why."""
    ns, name = platform.a, "too-big"
    cleanup(request, cluster, name, ns)
    job = rljob(name, ns, platform.a)
    job["spec"]["trainer"].update(replicas=2, gpusPerPod=8)
    cluster.apply(job)

    def queued_with_reason():
        st = cluster.get_json("rljob", name, "-n", ns).get("status", {})
        c = next((c for c in st.get("conditions", []) if c["type"] == "Queued"), None)
        return st.get("phase") == "Queued" and c and "insufficient" in c["message"] and c

    cond = cluster.wait_for("the job Queued with Kueue's message", queued_with_reason, 120)
    assert "nvidia.com/gpu" in cond["message"], cond
    wl = owned_by(cluster.get_json("workloads", "-n", ns)["items"], name)[0]
    assert not any(
        c["type"] == "Admitted" and c["status"] == "True"
        for c in wl.get("status", {}).get("conditions", [])
    )
    assert not owned_by(cluster.get_json("pod", "-n", ns)["items"], name)
