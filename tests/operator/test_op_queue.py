"""The work queue's three levels: a job without a Workload first, then one Kueue admitted
that has no pod yet, then the rest; a key is queued once, at its highest level."""

from __future__ import annotations

import asyncio
import copy

import pytest
from operator_helpers import admit, job, pod, stored
from rlpost_operator import builders as b
from rlpost_operator.controller import Controller

from rlpost import api


def workload(name: str) -> dict:
    j = job(name=name)
    ref = b.JobRef(name, "ns", f"uid-{name}")
    wl = stored(b.build_workload(ref, api.RLPostTrainJobSpec.model_validate(j["spec"]), "q"))
    wl["metadata"]["labels"] = b.labels(name)
    return wl


@pytest.mark.asyncio
async def test_new_jobs_then_admitted_without_pods_then_the_rest():
    ctl = Controller(object(), ["ns"])
    ctl.queue = asyncio.PriorityQueue()
    for name in ("running", "waiting", "admitted", "new"):
        ctl.cache.put_job(job(name=name))
    ctl.cache.put("Workload", workload("waiting"))  # not admitted yet
    ctl.cache.put("Workload", admit(workload("admitted")))
    ctl.cache.put("Workload", admit(workload("running")))
    trainer = copy.deepcopy(pod("running-trainer-0", "trainer"))
    trainer["metadata"]["labels"] = b.labels("running", "trainer")
    trainer["metadata"]["namespace"] = "ns"
    ctl.cache.put("Pod", trainer)
    levels = {n: ctl.priority(("ns", n)) for n in ("running", "waiting", "admitted", "new")}
    assert levels == {
        "new": ctl.URGENT,
        "admitted": ctl.START,
        "waiting": ctl.NORMAL,
        "running": ctl.NORMAL,
    }
    for name in ("running", "waiting", "admitted", "new", "running"):  # queued once each
        ctl.enqueue(("ns", name))
    order = []
    while not ctl.queue.empty():
        order.append(ctl.queue.get_nowait()[2][1])
    assert order == ["new", "admitted", "running", "waiting"]
