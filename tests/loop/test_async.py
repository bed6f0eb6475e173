"""Asynchronous loop (maxStaleness 2): no batch trains on samples older than 2 versions."""

from __future__ import annotations

import httpx

from tests.loop.conftest import buffer_get, example_job


def test_async_staleness_bound_holds_in_the_buffer_records(local_run):
    # Enough steps that some groups finish while a step trains (they are then 1 stale) even
    # when other work slows the engines; 12 steps once showed none on a loaded machine.
    steps = 24
    job = example_job(rollout__max_staleness=2, steps=steps)
    run = local_run(job)
    run.start()
    result = run.follow(timeout_s=600)
    assert [r["step"] for r in result.steps] == list(range(steps))

    records = buffer_get(run, "/records")
    assert [s["step"] for s in records["steps"]] == list(range(steps))
    staleness = [s["step"] - g["weight_version"] for s in records["steps"] for g in s["groups"]]
    assert len(staleness) == steps * job.spec.algorithm.rollout_batch_size
    assert max(staleness) <= 2
    assert min(staleness) >= 0
    # It really ran ahead: some groups were generated before the weights they train.
    assert max(staleness) >= 1, staleness
    for d in records["discarded_stale"]:
        assert d["step"] - d["weight_version"] > 2
    # The trainer saw the same bound, and the engines hold the last version.
    assert max(r["max_staleness"] for r in result.steps) <= 2
    for url in run.urls["engines"]:
        version = httpx.get(f"{url}/get_weight_version", timeout=10).json()["weight_version"]
        assert version == str(steps)
