"""Must-show 4: two tenants with the quotas of kueue/ (applied as they are, names suffixed),
the real Kueue manager deciding. A tenant cannot exceed its quota unless borrowing allows
it, and borrowing is bounded by its borrowingLimit and by what the others lend.

Quotas (kueue/README.md): per GPU kind team-a 8 nominal / borrowingLimit 4 / lendingLimit 4,
team-b 8 / 0 / 2. Workloads are created directly (one podSet, one pod): admission is
Kueue's decision on quota alone, the same the operator's Workload gets.
"""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.cluster

GPU = "nvidia.com/gpu"


def workload(name: str, ns: str, queue: str, gpus: int) -> dict:
    res = {"cpu": "1", "memory": "1Gi", GPU: str(gpus)}
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "queueName": queue,
            "podSets": [
                {
                    "name": "trainer",
                    "count": 1,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    "name": "c",
                                    "image": "busybox",
                                    "resources": {"requests": res, "limits": {GPU: str(gpus)}},
                                }
                            ],
                        }
                    },
                }
            ],
        },
    }


def cond(obj: dict, ctype: str) -> dict | None:
    return next(
        (c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), None
    )


def submit(cluster, ns: str, queue: str, gpus: int) -> str:
    name = f"wl-{gpus}-{uuid.uuid4().hex[:5]}"
    cluster.apply(workload(name, ns, queue, gpus))
    return name


def wait_admitted(cluster, ns: str, name: str) -> dict:
    def admitted():
        wl = cluster.get_json("workload", name, "-n", ns)
        c = cond(wl, "Admitted")
        return c and c["status"] == "True" and wl

    return cluster.wait_for(f"{name} admitted", admitted, timeout=60)


def wait_pending(cluster, ns: str, name: str) -> str:
    """Kueue looked at it and refused: QuotaReserved False with its message."""

    def pending():
        wl = cluster.get_json("workload", name, "-n", ns)
        c = cond(wl, "QuotaReserved")
        return c and c["status"] == "False" and c.get("message") and c["message"]

    msg = cluster.wait_for(f"{name} evaluated and pending", pending, timeout=60)
    assert cond(cluster.get_json("workload", name, "-n", ns), "Admitted") is None or (
        cond(cluster.get_json("workload", name, "-n", ns), "Admitted")["status"] != "True"
    )
    return msg


def gpu_usage(cluster, cq: str) -> dict[str, dict]:
    """flavor -> {total, borrowed} GPUs from the ClusterQueue's status."""
    st = cluster.get_json("clusterqueue", cq)["status"]
    out = {}
    for f in st.get("flavorsUsage", []):
        for r in f["resources"]:
            if r["name"] == GPU:
                out[f["name"]] = {"total": int(r["total"]), "borrowed": int(r.get("borrowed", 0))}
    return out


def delete(cluster, ns: str, *names: str) -> None:
    cluster.kubectl("delete", "workload", *names, "-n", ns, "--wait=true", timeout=60)


def test_team_b_never_exceeds_nominal_even_with_the_cohort_idle(cluster, tenants):
    t = tenants
    over = submit(cluster, t.b, t.b, 9)
    msg = wait_pending(cluster, t.b, over)
    assert "insufficient" in msg and GPU in msg, msg
    # Capacity is there (team-a idle, 16 GPUs per kind in the cohort): only policy says no.
    assert all(u["total"] == 0 for u in gpu_usage(cluster, t.a).values())
    within = submit(cluster, t.b, t.b, 8)
    wl = wait_admitted(cluster, t.b, within)
    assert wl["status"]["admission"]["clusterQueue"] == t.b
    assert all(u["borrowed"] == 0 for u in gpu_usage(cluster, t.b).values())
    # Still pending once the other is admitted: borrowingLimit 0, not "wait your turn".
    assert wait_pending(cluster, t.b, over)
    delete(cluster, t.b, over, within)


def test_team_a_borrows_up_to_what_team_b_lends(cluster, tenants):
    t = tenants
    borrow = submit(cluster, t.a, t.a, 10)
    wl = wait_admitted(cluster, t.a, borrow)
    flavor = wl["status"]["admission"]["podSetAssignments"][0]["flavors"][GPU]
    assert flavor == t.name("gpu-a")  # first flavor that fits, borrowing (MayStopSearch)
    usage = cluster.wait_for(
        "ClusterQueue usage shows the borrowed GPUs",
        lambda: (u := gpu_usage(cluster, t.a)).get(flavor, {}).get("borrowed") == 2 and u,
        timeout=30,
    )
    assert usage[flavor] == {"total": 10, "borrowed": 2}
    delete(cluster, t.a, borrow)

    # 11 > 8 + min(borrowingLimit 4, team-b's lendingLimit 2), in either GPU kind.
    too_much = submit(cluster, t.a, t.a, 11)
    msg = wait_pending(cluster, t.a, too_much)
    assert "insufficient" in msg, msg
    assert all(u["total"] == 0 for u in gpu_usage(cluster, t.b).values())  # team-b idle
    delete(cluster, t.a, too_much)


def test_borrowed_quota_is_gone_from_the_cohort(cluster, tenants):
    """team-a takes both GPU kinds to its ceiling (10 + 10); a third workload waits, and
    team-b still gets its unlent 6 per kind."""
    t = tenants
    first = submit(cluster, t.a, t.a, 10)
    second = submit(cluster, t.a, t.a, 10)
    flavors = {
        wait_admitted(cluster, t.a, n)["status"]["admission"]["podSetAssignments"][0]["flavors"][
            GPU
        ]
        for n in (first, second)
    }
    assert flavors == {t.name("gpu-a"), t.name("gpu-b")}
    third = submit(cluster, t.a, t.a, 1)
    assert "insufficient" in wait_pending(cluster, t.a, third)
    b6 = submit(cluster, t.b, t.b, 6)
    wait_admitted(cluster, t.b, b6)
    delete(cluster, t.a, first, second, third)
    delete(cluster, t.b, b6)


def test_queue_in_a_foreign_namespace_gets_no_quota(cluster, tenants, namespace):
    """A LocalQueue in a namespace without team-a's tenant label, pointing at team-a's
    ClusterQueue: the ClusterQueue's namespaceSelector keeps it out."""
    t = tenants
    cluster.apply(
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": "steal", "namespace": namespace},
            "spec": {"clusterQueue": t.a},
        }
    )
    name = submit(cluster, namespace, "steal", 1)
    # A workload of the tenant itself, submitted after it, is admitted: Kueue has had its
    # chance at the foreign one and said no.
    own = submit(cluster, t.a, t.a, 1)
    wait_admitted(cluster, t.a, own)
    wl = cluster.get_json("workload", name, "-n", namespace)
    qr = cond(wl, "QuotaReserved")
    assert not qr or qr["status"] == "False", qr
    assert "admission" not in wl.get("status", {})
    if qr:  # Kueue says why once it has evaluated it
        assert "namespace" in qr["message"].lower(), qr["message"]
    # Only the tenant's own workload counts (the ClusterQueue status catches up).
    cluster.wait_for(
        "ClusterQueue usage = the tenant's own 1 GPU",
        lambda: sum(u["total"] for u in gpu_usage(cluster, t.a).values()) == 1,
        timeout=30,
    )
    assert "admission" not in cluster.get_json("workload", name, "-n", namespace).get("status", {})
    delete(cluster, t.a, own)
