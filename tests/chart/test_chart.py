"""charts/rlpost with helm only (no cluster): lint, render, least-privilege RBAC, security
context, schema, two tenants side by side, CRD and dashboard copies."""

from __future__ import annotations

import filecmp

import pytest
import yaml

from e2e.platform.chart import (
    CHART,
    CLUSTER_SCOPED,
    REPO,
    by_kind,
    helm,
    one,
    render,
    render_error,
)

READ = {"get", "list", "watch"}
NEVER = {"escalate", "bind", "impersonate", "*"}


def rules_of(docs: list[dict], kind: str) -> list[dict]:
    return [r for d in by_kind(docs, kind) for r in d.get("rules", [])]


def operator_rules(docs: list[dict]) -> list[dict]:
    """Rules of every Role/ClusterRole bound to the operator's ServiceAccount."""
    bound = {
        (b["roleRef"]["kind"], b["roleRef"]["name"])
        for b in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding")
        if any(s["kind"] == "ServiceAccount" and s["name"] == "rlpost" for s in b["subjects"])
    }
    return [
        r
        for d in by_kind(docs, "Role") + by_kind(docs, "ClusterRole")
        if (d["kind"], d["metadata"]["name"]) in bound
        for r in d["rules"]
    ]


def test_helm_lint_strict_is_clean():
    proc = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"watch": {"clusterWide": True, "namespaces": []}},
        {"watch": {"clusterWide": False, "namespaces": ["team-a", "team-a-dev"]}},
        {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}},
        {"networkPolicy": {"enabled": True, "mode": "job"}},
        {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}},
    ],
)
def test_template_renders_valid_objects(values):
    docs = render(values=values)
    for d in docs:
        assert d["apiVersion"] and d["kind"] and d["metadata"]["name"], d
        if d["kind"] not in CLUSTER_SCOPED:
            assert d["metadata"].get("namespace"), f"{d['kind']} without namespace"
        assert len(d["metadata"]["name"]) <= 63


def test_operator_deployment_is_hardened():
    dep = one(render(), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The image's own user (operator/Dockerfile: USER 10001:10001), as in the operator's pods.
    psc = pod["securityContext"]
    assert (psc["runAsUser"], psc["runAsGroup"], psc["fsGroup"]) == (10001, 10001, 10001)
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(c["resources"]["requests"]) == {"cpu", "memory"}
    assert c["livenessProbe"]["httpGet"]["port"] == "metrics"
    assert c["readinessProbe"]["httpGet"]["port"] == "metrics"
    # A read-only root needs a writable /tmp for Python and kopf.
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert pod["serviceAccountName"] == "rlpost"
    assert c["command"] == ["python", "-m", "rlpost_operator"]
    assert c["args"] == ["--namespace=team-a", "--metrics-port=8080"]


def test_namespace_scope_roles_in_each_watched_namespace_only():
    docs = render(values={"watch": {"clusterWide": False, "namespaces": ["team-a", "team-a-dev"]}})
    dep = one(docs, "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["--namespace=team-a", "--namespace=team-a-dev"]
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-a-dev"]
    for rb in by_kind(docs, "RoleBinding"):
        assert rb["roleRef"]["kind"] == "Role"
        assert rb["subjects"] == [
            {"kind": "ServiceAccount", "name": "rlpost", "namespace": "team-a"}
        ]
    # Only the small read-only ClusterRole is bound cluster-wide to the operator.
    (crb,) = [
        b for b in by_kind(docs, "ClusterRoleBinding") if b["subjects"][0]["name"] == "rlpost"
    ]
    cr = one(docs, "ClusterRole", crb["roleRef"]["name"])
    for rule in cr["rules"]:
        assert set(rule["verbs"]) <= READ, rule
        assert "secrets" not in rule["resources"] and "pods" not in rule["resources"]
    groups = {g for r in cr["rules"] for g in r["apiGroups"]}
    assert groups == {"kueue.x-k8s.io", "apiextensions.k8s.io", "storage.k8s.io", ""}
    # StorageClasses, read to know which claims bind before a pod mounts them
    (sc,) = [r for r in cr["rules"] if r["apiGroups"] == ["storage.k8s.io"]]
    assert sc["resources"] == ["storageclasses"] and set(sc["verbs"]) == {"get", "list"}
    # Core resources: nodes, read to check a job's per-pod GPUs before admission; the
    # watched namespaces themselves (by name, `get` only), read before a pass writes there
    # so that a namespace being deleted is left alone.
    core = [r for r in cr["rules"] if r["apiGroups"] == [""]]
    assert [r["resources"] for r in core] == [["nodes"], ["namespaces"]], core
    assert core[1]["verbs"] == ["get"]
    assert core[1]["resourceNames"] == ["team-a", "team-a-dev"]


def test_rbac_is_least_privilege():
    for values in ({}, {"watch": {"clusterWide": True, "namespaces": []}}):
        docs = render(values=values)
        rules = rules_of(docs, "Role") + rules_of(docs, "ClusterRole")
        assert rules
        for r in rules:
            assert not set(r["verbs"]) & NEVER, r
            assert "*" not in r["resources"] and "*" not in r["apiGroups"], r
            assert not {"pods/exec", "pods/attach", "pods/portforward"} & set(r["resources"])
            assert "update" not in r["verbs"] or "pods" not in r["resources"], r
            if {"clusterroles", "clusterrolebindings"} & set(r["resources"]):
                raise AssertionError(f"operator must not manage cluster RBAC: {r}")
        ops = operator_rules(docs)
        granted = {
            (g, res, v)
            for r in ops
            for g in r["apiGroups"]
            for res in r["resources"]
            for v in r["verbs"]
        }
        # What the operator needs (operator/ and docs/CONTRACTS.md).
        for need in [
            ("rlpost.dev", "rlposttrainjobs", "watch"),
            ("rlpost.dev", "rlposttrainjobs/status", "patch"),
            ("kueue.x-k8s.io", "workloads", "create"),
            ("kueue.x-k8s.io", "workloads/status", "patch"),
            ("", "pods", "create"),
            ("", "pods", "delete"),
            ("", "pods", "list"),
            ("", "secrets", "create"),
            ("rbac.authorization.k8s.io", "roles", "create"),
            ("", "events", "create"),
            ("", "persistentvolumeclaims", "create"),
        ]:
            assert need in granted, need
        # The gang is the operator's own pods: no workload controllers to write.
        assert not any(g == "apps" for g, _, _ in granted)
        assert ("rlpost.dev", "rlposttrainjobs", "create") not in granted
        assert ("rlpost.dev", "rlposttrainjobs", "delete") not in granted


def test_cluster_wide_mode():
    docs = render(values={"watch": {"clusterWide": True, "namespaces": []}})
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    dep = one(docs, "Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["args"][0] == "--all-namespaces"
    crb = one(docs, "ClusterRoleBinding", "team-a-rlpost")
    assert crb["subjects"][0] == {"kind": "ServiceAccount", "name": "rlpost", "namespace": "team-a"}
    # The PodMonitor then looks at every namespace.
    docs = render(
        values={
            "watch": {"clusterWide": True, "namespaces": []},
            "metrics": {"podMonitor": {"enabled": True}},
        }
    )
    assert one(docs, "PodMonitor")["spec"]["namespaceSelector"] == {"any": True}


def test_two_tenants_side_by_side_have_no_clashing_cluster_objects():
    a = render("rlpost", "team-a")
    b = render("rlpost", "team-b")
    names_a = {(d["kind"], d["metadata"]["name"]) for d in a if d["kind"] in CLUSTER_SCOPED}
    names_b = {(d["kind"], d["metadata"]["name"]) for d in b if d["kind"] in CLUSTER_SCOPED}
    assert names_a and names_b
    assert not names_a & names_b, names_a & names_b
    # Namespaced objects land in the tenant's own namespace.
    assert {d["metadata"]["namespace"] for d in b if d["kind"] not in CLUSTER_SCOPED} == {"team-b"}


def test_schema_rejects_unsafe_or_malformed_values():
    assert "readOnlyRootFilesystem" in render_error(
        {"securityContext": {"readOnlyRootFilesystem": False, "allowPrivilegeEscalation": False}}
    )
    assert "runAsNonRoot" in render_error({"podSecurityContext": {"runAsNonRoot": False}})
    assert "replicaCount" in render_error({"replicaCount": 2})
    assert "namespaces" in render_error({"watch": {"clusterWide": False, "namespaces": ["Team_A"]}})
    assert "metricsPort" in render_error({"operator": {"metricsPort": 70000}})
    assert "mode" in render_error({"networkPolicy": {"enabled": True, "mode": "everything"}})
    # A typo is an error, not a silently ignored key.
    assert (
        "additional" in render_error({"watch": {"clusterWide": False, "namespace": ["a"]}}).lower()
    )


def test_monitors_keep_the_metrics_own_labels():
    docs = render(
        values={"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}}
    )
    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True  # rlpost_jobs{namespace}
    assert sm["spec"]["selector"]["matchLabels"] == one(docs, "Service")["spec"]["selector"]
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "rlpost"}
    assert all(e["honorLabels"] for e in pm["spec"]["podMetricsEndpoints"])  # role `job` label
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    assert not by_kind(render(), "ServiceMonitor") and not by_kind(render(), "PodMonitor")


def test_dashboard_configmap_for_grafana_sidecar():
    cm = one(render(), "ConfigMap", "rlpost-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert (
        cm["data"]["rlpost.json"].strip()
        == (REPO / "dashboards" / "rlpost.json").read_text().strip()
    )
    other = one(
        render(values={"dashboards": {"enabled": True, "namespace": "monitoring"}}), "ConfigMap"
    )
    assert other["metadata"]["namespace"] == "monitoring"


def test_chart_crds_are_the_generated_ones():
    generated = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    assert generated, "crds/ is empty: run `make crds` (python -m rlpost.crdgen --out crds/)"
    in_chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert in_chart == generated, "run `make chart-sync`"
    for name in generated:
        assert filecmp.cmp(REPO / "crds" / name, CHART / "crds" / name, shallow=False), (
            f"charts/rlpost/crds/{name} differs from crds/{name}: run `make chart-sync`"
        )
    crd = yaml.safe_load((CHART / "crds" / generated[0]).read_text())
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "rlposttrainjobs.rlpost.dev"
    crds = by_kind(render(include_crds=True), "CustomResourceDefinition")
    assert [c["metadata"]["name"] for c in crds] == ["rlposttrainjobs.rlpost.dev"]
