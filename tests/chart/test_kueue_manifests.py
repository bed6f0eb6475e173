"""kueue/: the flavors fit the nodes, every reference resolves, quotas fit the cluster and
say what kueue/README.md says (team-a borrows, team-b never does)."""

from __future__ import annotations

from e2e.cluster.localcluster import GPU, GPU_B_TAINT, GPUS_PER_NODE, NODE_GROUPS, fake_gpu_node
from e2e.platform.chart import KUEUE, kueue_docs


def of(kind):
    return {d["metadata"]["name"]: d for d in kueue_docs() if d["kind"] == kind}


def quota(cq: dict, flavor: str, resource: str) -> dict:
    for group in cq["spec"]["resourceGroups"]:
        for f in group["flavors"]:
            if f["name"] == flavor:
                for r in f["resources"]:
                    if r["name"] == resource:
                        return r
    raise KeyError((cq["metadata"]["name"], flavor, resource))


def test_kustomization_lists_every_manifest():
    files = {str(p.relative_to(KUEUE)) for p in KUEUE.rglob("*.yaml")} - {"kustomization.yaml"}
    import yaml

    listed = set(yaml.safe_load((KUEUE / "kustomization.yaml").read_text())["resources"])
    assert files == listed


def test_gpu_flavors_select_the_gpu_nodes_and_tolerate_their_taints():
    flavors = of("ResourceFlavor")
    for kind in NODE_GROUPS:
        f = flavors[f"gpu-{kind}"]
        node = fake_gpu_node(kind, 0)
        labels = node["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in f["spec"]["nodeLabels"].items())
        for taint in node["spec"]["taints"]:
            assert any(
                t["key"] == taint["key"]
                and t.get("value") == taint["value"]
                and t["effect"] == taint["effect"]
                for t in f["spec"].get("tolerations", [])
            ), f"gpu-{kind} does not tolerate {taint}"
    assert GPU_B_TAINT in fake_gpu_node("b", 0)["spec"]["taints"]
    assert flavors["cpu"]["spec"] == {}


def test_cluster_queues_reference_existing_objects_and_fit_the_cluster():
    flavors, cqs, cohorts = of("ResourceFlavor"), of("ClusterQueue"), of("Cohort")
    lqs, nss = of("LocalQueue"), of("Namespace")
    assert set(cqs) == {"team-a", "team-b"}
    for cq in cqs.values():
        assert cq["spec"]["cohortName"] in cohorts
        for group in cq["spec"]["resourceGroups"]:
            for f in group["flavors"]:
                assert f["name"] in flavors
                assert [r["name"] for r in f["resources"]] == group["coveredResources"]
                for r in f["resources"]:
                    assert _q(r.get("lendingLimit", 0)) <= _q(r["nominalQuota"])
    for lq in lqs.values():
        cq = cqs[lq["spec"]["clusterQueue"]]
        ns_labels = nss[lq["metadata"]["namespace"]]["metadata"]["labels"]
        sel = cq["spec"]["namespaceSelector"]["matchLabels"]
        assert all(ns_labels.get(k) == v for k, v in sel.items()), (
            "LocalQueue's namespace not admitted"
        )
    # Nominal GPU quotas never promise more than the nodes have.
    for kind, nodes in NODE_GROUPS.items():
        total = sum(int(quota(cq, f"gpu-{kind}", GPU)["nominalQuota"]) for cq in cqs.values())
        assert total <= nodes * GPUS_PER_NODE


def test_borrowing_policy_as_documented():
    cqs = of("ClusterQueue")
    a, b = cqs["team-a"], cqs["team-b"]
    for flavor in ("gpu-a", "gpu-b"):
        assert quota(b, flavor, GPU)["borrowingLimit"] == 0  # team-b never exceeds nominal
        assert quota(a, flavor, GPU)["borrowingLimit"] > 0
        # team-a's ceiling: nominal + min(its borrowingLimit, what team-b lends).
        ceiling = quota(a, flavor, GPU)["nominalQuota"] + min(
            quota(a, flavor, GPU)["borrowingLimit"], quota(b, flavor, GPU)["lendingLimit"]
        )
        assert ceiling == 10
    readme = (KUEUE / "README.md").read_text()
    assert "borrowingLimit" in readme and "lendingLimit" in readme and "10" in readme


def _q(v) -> float:
    s = str(v)
    for suffix, mult in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * mult
    return float(s)
