"""Borrowing is temporary: when the lender needs its quota back, Kueue preempts the
borrower's job (reclaimWithinCohort), the operator stops its gang, and the job runs again
once the quota is free. kueue/ quotas: per GPU kind team-a 8 nominal (+ borrows up to 2
from team-b), team-b 8 nominal, lends 2.

Team a's job is an RLPostTrainJob reconciled by the operator on the chart SA's token
(fixture `operator_a`); the fillers are plain Workloads (quota only, no pods)."""

from __future__ import annotations

import json

import pytest

from e2e.platform.test_kueue_quotas import GPU, cond, gpu_usage, wait_admitted
from e2e.platform.test_kueue_quotas import workload as plain_workload
from e2e.platform.test_operator_rbac import owned_by, rljob

pytestmark = pytest.mark.cluster


def filler(name: str, ns: str, queue: str, gpus: int, priority: str, value: int) -> dict:
    """A plain Workload with a WorkloadPriorityClass (a job integration sets both)."""
    wl = plain_workload(name, ns, queue, gpus)
    wl["spec"]["priorityClassRef"] = {
        "group": "kueue.x-k8s.io",
        "kind": "WorkloadPriorityClass",
        "name": priority,
    }
    wl["spec"]["priority"] = value
    return wl


def test_lender_reclaims_quota_by_preempting_the_borrowers_job(cluster, platform, operator_a):
    t = platform
    high = t.name("rlpost-production")
    fillers: list[tuple[str, str]] = []
    name = "borrower"
    try:
        for cq in (t.a, t.b):  # start from idle queues (other tests' jobs are gone)
            cluster.wait_for(
                f"{cq} idle",
                lambda cq=cq: all(u["total"] == 0 for u in gpu_usage(cluster, cq).values()),
                timeout=120,
            )

        def fill(ns: str, wl_name: str, gpus: int) -> str:
            cluster.apply(filler(wl_name, ns, ns, gpus, high, 1000))
            fillers.append((ns, wl_name))
            wl = wait_admitted(cluster, ns, wl_name)
            return wl["status"]["admission"]["podSetAssignments"][0]["flavors"][GPU]

        # team-a takes its nominal 8 + 8: gpu-a, then gpu-b.
        assert fill(t.a, "a-fill-1", 8) == t.name("gpu-a")
        assert fill(t.a, "a-fill-2", 8) == t.name("gpu-b")

        # team-a's job (lowest priority) fits only by borrowing 2 gpu-a from team-b.
        job = rljob(name, t.a, t.a)
        job["spec"]["priorityClassName"] = t.name("rlpost-preemptible")
        cluster.apply(job)

        def job_workload() -> dict | None:
            wls = owned_by(cluster.get_json("workloads", "-n", t.a)["items"], name)
            return wls[0] if wls else None

        def admitted() -> dict | None:
            wl = job_workload()
            c = wl and cond(wl, "Admitted")
            return c and c["status"] == "True" and wl

        wl = cluster.wait_for("the borrowing job admitted", admitted, timeout=150)
        assert {
            a["name"]: a["flavors"].get(GPU) for a in wl["status"]["admission"]["podSetAssignments"]
        }["trainer"] == t.name("gpu-a")
        cluster.wait_for(
            "team-a borrowing 2 gpu-a GPUs",
            lambda: gpu_usage(cluster, t.a)[t.name("gpu-a")]["borrowed"] == 2,
            timeout=30,
        )
        cluster.wait_for(
            "the job Running/Admitted",
            lambda: (
                cluster.get_json("rljob", name, "-n", t.a).get("status", {}).get("phase")
                in ("Admitted", "Running")
            ),
            timeout=90,
        )

        # team-b wants all 16 of its GPUs: 8 fit on gpu-b at once; the other 8 need the 2
        # gpu-a GPUs lent to team-a.
        assert fill(t.b, "b-fill-1", 8) == t.name("gpu-b")
        cluster.apply(filler("b-fill-2", t.b, t.b, 8, high, 1000))
        fillers.append((t.b, "b-fill-2"))

        def evicted() -> dict | None:
            wl = job_workload()
            c = wl and cond(wl, "Evicted")
            return c and c["status"] == "True" and c

        ev = cluster.wait_for("Kueue evicts the borrower", evicted, timeout=90)
        assert ev["reason"] == "Preempted", ev
        # The operator stops the gang and gives the quota back; team-b gets its GPUs.
        wl = wait_admitted(cluster, t.b, "b-fill-2")
        assert wl["status"]["admission"]["podSetAssignments"][0]["flavors"][GPU] == t.name("gpu-a")
        st = cluster.get_json("rljob", name, "-n", t.a)["status"]
        assert st["phase"] in ("Suspended", "Queued"), json.dumps(st, indent=1)
        cluster.wait_for(
            "the job's trainer stopped",
            lambda: (
                not [
                    p
                    for p in cluster.get_json("pods", "-n", t.a)["items"]
                    if p["metadata"]["name"].startswith(f"{name}-trainer")
                ]
            ),
            timeout=90,
        )
        cluster.wait_for(
            "team-a borrowing nothing",
            lambda: gpu_usage(cluster, t.a)[t.name("gpu-a")]["borrowed"] == 0,
            timeout=30,
        )

        # Quota free again: the job is re-admitted and runs.
        cluster.kubectl("delete", "workload", "b-fill-2", "-n", t.b)
        cluster.wait_for("the job re-admitted", admitted, timeout=120)
    finally:
        cluster.kubectl("delete", "rljob", name, "-n", t.a, "--wait=false", check=False)
        for ns, wl_name in fillers:
            cluster.kubectl("delete", "workload", wl_name, "-n", ns, "--wait=false", check=False)
