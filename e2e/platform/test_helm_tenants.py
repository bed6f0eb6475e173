"""Must-show 1 and the RBAC half of 2: the chart lints and templates clean, installs for two
tenants side by side into the real control plane, and the chart ServiceAccount's token
(TokenRequest) may do what the operator needs in its own namespace and nothing else:
403 in the other tenant's namespace and for writes it does not need.

The operator itself running on that token is e2e/platform/test_operator_rbac.py."""

from __future__ import annotations

import json
import subprocess

import pytest

from e2e.cluster.paths import bin_dir
from e2e.platform.chart import CHART, CLUSTER_SCOPED, helm, render

pytestmark = pytest.mark.cluster

RELEASE = "rlpost"


def as_sa(platform, tenant_ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    """kubectl with the tenant's operator ServiceAccount token (no admin credentials)."""
    return subprocess.run(
        [str(bin_dir() / "kubectl"), "--kubeconfig", str(platform.kubeconfigs[tenant_ns]), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def can_i(platform, tenant_ns: str, verb: str, resource: str, ns: str | None = None) -> bool:
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource]
    args += [f"--subresource={sub}"] if sub else []  # "pods/exec" alone is misread
    args += ["-n", ns] if ns else []
    proc = as_sa(platform, tenant_ns, *args)
    assert proc.stdout.strip() in ("yes", "no"), proc.stdout + proc.stderr
    return proc.stdout.strip() == "yes"


def test_lint_and_template_clean():
    lint = helm("lint", "--strict", str(CHART), "--namespace", "team-a")
    assert "0 chart(s) failed" in lint.stdout and "[WARNING]" not in lint.stdout, lint.stdout
    for values in ({}, {"watch": {"clusterWide": True, "namespaces": []}}):
        docs = render(values=values, include_crds=True)
        assert {d["kind"] for d in docs} >= {
            "CustomResourceDefinition",
            "ServiceAccount",
            "Deployment",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "NetworkPolicy",
            "Service",
        }


def test_two_tenants_installed_side_by_side(cluster, platform):
    t = platform
    for ns in (t.a, t.b):
        status = json.loads(cluster.helm("status", RELEASE, "--namespace", ns, "-o", "json").stdout)
        assert status["info"]["status"] == "deployed", status["info"]
        dep = cluster.wait_for(  # kwok runs the pod
            f"operator Deployment ready in {ns}",
            lambda ns=ns: (
                (d := cluster.get_json("deployment", RELEASE, "-n", ns))["status"].get(
                    "readyReplicas"
                )
                == 1
                and d
            ),
            timeout=60,
        )
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"--namespace={ns}" in args
        # What Kubernetes stored is the hardened pod the chart promises.
        pod_sc = dep["spec"]["template"]["spec"]["securityContext"]
        assert pod_sc["runAsNonRoot"] is True
        assert dep["spec"]["template"]["spec"]["containers"][0]["securityContext"][
            "readOnlyRootFilesystem"
        ]
        for kind in ("networkpolicy", "configmap", "role", "rolebinding", "serviceaccount"):
            sel = f"app.kubernetes.io/instance={RELEASE}"
            got = cluster.kubectl("get", kind, "-n", ns, "-l", sel, "-o", "name").stdout.split()
            assert got, f"no {kind} of the release in {ns}"
    # Both releases' cluster-scoped objects exist, under different names.
    for ns in (t.a, t.b):
        for kind in ("clusterrole", "clusterrolebinding"):
            cluster.kubectl("get", kind, f"{ns}-{RELEASE}")
    # The CRD came from the chart's crds/ (installed once; the second install skipped it).
    crd = cluster.get_json("crd", "rlposttrainjobs.rlpost.dev")
    assert crd["spec"]["group"] == "rlpost.dev"
    # Every cluster-scoped object of tenant b's release is labelled for it.
    for d in render(RELEASE, t.b):
        if d["kind"] in CLUSTER_SCOPED:
            got = cluster.get_json(d["kind"].lower(), d["metadata"]["name"])
            assert got["metadata"]["annotations"]["meta.helm.sh/release-namespace"] == t.b


NEEDED = [  # (verb, resource) the operator needs in its own namespace
    ("watch", "rlposttrainjobs.rlpost.dev"),
    ("patch", "rlposttrainjobs.rlpost.dev/status"),
    ("create", "workloads.kueue.x-k8s.io"),
    ("patch", "workloads.kueue.x-k8s.io/status"),
    ("list", "pods"),
    ("create", "pods"),  # the gang is the operator's own pods
    ("delete", "pods"),
    ("create", "services"),
    ("create", "secrets"),
    ("create", "configmaps"),
    ("create", "serviceaccounts"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("create", "networkpolicies.networking.k8s.io"),
    ("create", "events"),
]
NOT_NEEDED_HERE = [  # writes in its own namespace it does not need
    ("update", "pods"),
    ("create", "pods/exec"),
    ("create", "pods/portforward"),
    ("create", "rlposttrainjobs.rlpost.dev"),
    ("delete", "rlposttrainjobs.rlpost.dev"),
    ("create", "localqueues.kueue.x-k8s.io"),
    ("create", "jobs.batch"),
    ("create", "cronjobs.batch"),
    ("create", "statefulsets.apps"),  # the gang is pods the operator creates itself
    ("create", "deployments.apps"),
]
CLUSTER_DENIED = [  # cluster-scoped writes
    ("create", "clusterqueues.kueue.x-k8s.io"),
    ("patch", "resourceflavors.kueue.x-k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "nodes"),
    ("create", "namespaces"),
]


def test_sa_token_may_do_what_the_operator_needs_in_its_namespace(platform):
    t = platform
    for verb, res in NEEDED:
        assert can_i(t, t.a, verb, res, t.a), f"operator SA cannot {verb} {res} in {t.a}"
    for verb, res in [
        ("list", "clusterqueues.kueue.x-k8s.io"),
        ("watch", "resourceflavors.kueue.x-k8s.io"),
        ("get", "workloadpriorityclasses.kueue.x-k8s.io"),
    ]:
        assert can_i(t, t.a, verb, res), f"operator SA cannot {verb} {res} (cluster)"
    # Its own namespace object, read before a pass writes (is it being deleted?); never the
    # other tenant's.
    assert as_sa(t, t.a, "get", "namespace", t.a).returncode == 0
    other = as_sa(t, t.a, "get", "namespace", t.b)
    assert other.returncode != 0 and "Forbidden" in other.stderr, other.stderr
    # A real request, not only the authorizer's opinion.
    proc = as_sa(t, t.a, "create", "configmap", "rbac-probe", "-n", t.a, "--from-literal=a=b")
    assert proc.returncode == 0, proc.stderr
    assert as_sa(t, t.a, "delete", "configmap", "rbac-probe", "-n", t.a).returncode == 0


def test_sa_token_is_denied_in_the_other_tenant_and_for_unneeded_writes(platform):
    t = platform
    for verb, res in NEEDED + [("get", "secrets"), ("list", "configmaps")]:
        assert not can_i(t, t.a, verb, res, t.b), f"team-a's operator may {verb} {res} in {t.b}"
        assert not can_i(t, t.b, verb, res, t.a), f"team-b's operator may {verb} {res} in {t.a}"
    for verb, res in NOT_NEEDED_HERE:
        assert not can_i(t, t.a, verb, res, t.a), f"operator SA may {verb} {res}"
    for verb, res in CLUSTER_DENIED:
        assert not can_i(t, t.a, verb, res), f"operator SA may {verb} {res} cluster-wide"


def test_real_requests_get_403(platform):
    t = platform
    # Reading the other tenant's secrets, raw: the API server answers 403.
    raw = as_sa(t, t.a, "get", "--raw", f"/api/v1/namespaces/{t.b}/secrets")
    assert raw.returncode != 0 and "Forbidden" in raw.stderr, raw.stderr
    # kubectl -v=6 prints the HTTP status of each request.
    for args in [
        ("create", "configmap", "x", "-n", t.b, "--from-literal=a=b"),  # other tenant
        ("get", "rlposttrainjobs.rlpost.dev", "-n", t.b),  # other tenant's jobs
        ("create", "job", "shell", "--image=busybox", "-n", t.a),  # batch: not needed
        ("create", "namespace", f"evil-{t.suffix}"),  # cluster-scoped write
        ("delete", "clusterqueue", t.b),  # the other tenant's quota
    ]:
        proc = as_sa(t, t.a, *args, "-v=6")
        assert proc.returncode != 0, f"allowed: kubectl {' '.join(args)}"
        assert "403 Forbidden" in proc.stderr, f"kubectl {' '.join(args)}:\n{proc.stderr[-800:]}"


def test_tenant_users_and_kueue_get_what_the_chart_grants(cluster, platform):
    """Aggregated roles: a namespace `edit` user may manage RLPostTrainJobs there (and only
    there); Kueue's manager may read them (it GETs each Workload's owner)."""
    t = platform
    user = f"alice-{t.suffix}"
    cluster.kubectl("create", "rolebinding", "alice-edit", "--clusterrole=edit",
                    f"--user={user}", "-n", t.a)  # fmt: skip

    def can(verb: str, ns: str, who: str = user) -> bool:
        out = cluster.kubectl("auth", "can-i", verb, "rlposttrainjobs.rlpost.dev", "-n", ns,
                              f"--as={who}", check=False).stdout.strip()  # fmt: skip
        return out == "yes"

    cluster.wait_for("edit aggregates rlposttrainjobs", lambda: can("create", t.a), timeout=30)
    assert can("delete", t.a)
    assert not can("create", t.b)
    kueue = "system:serviceaccount:kueue-system:kueue-controller-manager"
    assert can("get", t.a, kueue) and can("get", t.b, kueue)
    assert not can("patch", t.a, kueue)
