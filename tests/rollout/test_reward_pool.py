"""The reward pool on a real local Ray head (`ray start --head --block`, as `rlpost run
--reward-workers N` starts it): a Ray worker killed mid-batch loses no sample and scores none
twice; timeouts, reward errors, duplicate ids; code_exec on the pool; the runner's wiring."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import ray  # the dev extra installs it: a missing ray fails here, never skips
from prometheus_client import generate_latest
from rlpost_rollout.buffer.__main__ import reward_fn
from rlpost_rollout.buffer.metrics import BufferMetrics
from rlpost_rollout.rewards import RewardError
from rlpost_rollout.rewards.pool import RewardPool, connect

from rlpost.api import RewardSpec
from rlpost.local import raypool
from rlpost.local.runner import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A 2-CPU Ray head in its own process group; this process is its driver. Stopped (the
    whole group) at the end, and nothing of it is left."""
    logs = tmp_path_factory.mktemp("ray")
    port = free_port()
    env = raypool.head_env({**os.environ, "PYTHONPATH": str(ROOT)})
    with open(logs / "head.log", "wb") as out:
        head = subprocess.Popen(
            raypool.head_argv(port, 2),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        connect(f"127.0.0.1:{port}", timeout_s=120)
        yield f"127.0.0.1:{port}"
    finally:
        ray.shutdown()
        # The pool is disposable: the whole process group, at once.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
        left: list[str] = []
        for _ in range(50):  # killed processes are reaped by init within a moment
            left = subprocess.run(
                ["pgrep", "-g", str(head.pid)], capture_output=True, text=True
            ).stdout.split()
            if not left:
                break
            time.sleep(0.2)
        assert not left, f"Ray processes left: {left}"


def spec(function: str, **kw) -> RewardSpec:
    return RewardSpec(type="custom", function=f"tests.rollout.pool_rewards:{function}", **kw)


def lines(log: Path) -> list[list[str]]:
    return [x.split() for x in log.read_text().splitlines()] if log.exists() else []


async def wait_for(cond, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_worker_killed_mid_batch_scores_every_sample_once(ray_head, tmp_path):
    log = tmp_path / "calls.log"
    pool = RewardPool(spec("traced"), max_in_flight=4, timeout_s=120, max_retries=3)
    sids = [f"g0-{j}" for j in range(10)]

    def label(sid):
        return {"log": str(log), "sid": sid, "cost": 0.6}

    batch = asyncio.gather(
        *(pool.score(s, "p", "x" * (i + 1), label(s)) for i, s in enumerate(sids))
    )
    batch = asyncio.ensure_future(batch)

    # Mid-batch: a sample has started on a worker and not finished; kill that worker.
    def running():
        done = {x[1] for x in lines(log) if x[0] == "done"}
        return [x for x in lines(log) if x[0] == "start" and x[1] not in done]

    await wait_for(lambda: len(running()) >= 1)
    victim_sid, victim_pid = running()[0][1], int(running()[0][2])
    os.kill(victim_pid, signal.SIGKILL)

    scores = await asyncio.wait_for(batch, 180)
    assert scores == [float(i + 1) for i in range(len(sids))]  # each sample its own score
    assert list(pool.scores) == sids or sorted(pool.scores) == sorted(sids)
    assert len(pool.scores) == len(sids)  # recorded once per sample id
    starts = Counter(x[1] for x in lines(log) if x[0] == "start")
    dones = Counter(x[1] for x in lines(log) if x[0] == "done")
    assert starts[victim_sid] == 2  # Ray re-ran the task of the killed worker
    assert dones == Counter(sids)  # every sample scored exactly once
    retry_pid = [int(x[2]) for x in lines(log) if x[0] == "start" and x[1] == victim_sid][-1]
    assert retry_pid != victim_pid  # on a new worker process

    # The run goes on: asking again for scored ids runs nothing; new samples score.
    n = len(lines(log))
    assert await pool.score(sids[3], "p", "zzz", label(sids[3])) == 4.0
    assert len(lines(log)) == n
    more = await asyncio.gather(
        *(pool.score(f"g1-{j}", "p", "ab", label(f"g1-{j}")) for j in range(4))
    )
    assert more == [2.0] * 4


@pytest.mark.asyncio
async def test_concurrent_duplicates_run_once(ray_head, tmp_path):
    log = tmp_path / "calls.log"
    pool = RewardPool(spec("traced"), max_in_flight=4, timeout_s=60)
    label = {"log": str(log), "sid": "dup", "cost": 0.3}
    got = await asyncio.gather(*(pool.score("dup", "p", "abc", label) for _ in range(5)))
    assert got == [3.0] * 5
    assert [x[1] for x in lines(log) if x[0] == "start"] == ["dup"]


@pytest.mark.asyncio
async def test_timeout_and_errors_fail_the_sample_and_the_pool_goes_on(ray_head, tmp_path):
    log = tmp_path / "calls.log"
    hung = RewardPool(spec("hangs"), max_in_flight=2, timeout_s=2)
    t = time.monotonic()
    with pytest.raises(RewardError, match="timed out"):
        await hung.score("h1", "p", "r", {"log": str(log), "sid": "h1"})
    assert time.monotonic() - t < 20
    bad = RewardPool(spec("raises"), max_in_flight=2, timeout_s=30, max_retries=3)
    with pytest.raises(RewardError, match="ValueError: no score for you"):
        await bad.score("e1", "p", "r", {"log": str(log), "sid": "e1"})
    starts = Counter(x[1] for x in lines(log) if x[0] == "start")
    assert starts["e1"] == 1  # an exception is the reward's answer: not retried
    good = RewardPool(spec("traced"), max_in_flight=2, timeout_s=60)
    assert await good.score("ok", "p", "abcd", {"log": str(log), "sid": "ok", "cost": 0}) == 4.0


@pytest.mark.asyncio
async def test_code_exec_on_the_pool_through_the_buffers_reward(ray_head, monkeypatch):
    """The buffer's own wiring: rewards.pool.workers > 0 and RLPOST_RAY_ADDRESS."""
    rs = RewardSpec(type="code_exec", sandbox={"wallSeconds": 5}, pool={"workers": 2})
    monkeypatch.setenv("RLPOST_RAY_ADDRESS", ray_head)
    metrics = BufferMetrics("j")
    reward = reward_fn(rs, metrics)
    label = {
        "entry_point": "add",
        "tests": [{"args": [1, 2], "expected": 3}, "assert add(0, 1) == 1"],
    }
    good = "```python\ndef add(a, b):\n    return a + b\n```"
    loops = "def add(a, b):\n    while True:\n        pass"
    got = await asyncio.gather(
        reward("p", good, label, key="s1"),
        reward("p", loops, label, key="s2"),
        reward("p", "def add(a, b):\n    return 1", label, key="s3"),
    )
    assert got == [1.0, 0.0, 0.5]
    exposed = generate_latest(metrics.registry).decode()
    assert 'rlpost_reward_pool_tasks_total{job="j",outcome="ok"} 3.0' in exposed


def test_rlpost_run_wires_a_ray_head_to_the_buffer(tmp_path):
    from rlpost.local.runner import LocalRun
    from tests.loop.conftest import example_job

    run = LocalRun(example_job(reward__pool__workers=2), tmp_path, quiet=True)
    waves = run.roles()
    pool = [r for wave in waves for r in wave if r.name == "reward-pool"]
    assert len(pool) == 1 and "--num-cpus=2" in pool[0].argv and "--block" in pool[0].argv
    buffer = next(r for wave in waves for r in wave if r.name == "buffer")
    assert buffer.env["RLPOST_RAY_ADDRESS"] == run.urls["ray"]
    names = [[r.name for r in wave] for wave in waves]
    assert names.index(["buffer"]) > next(i for i, w in enumerate(names) if "reward-pool" in w)
    plain = LocalRun(example_job(), tmp_path / "plain", quiet=True)
    assert not any(r.name == "reward-pool" for wave in plain.roles() for r in wave)


def test_reward_workers_flag_overrides_the_spec():
    from rlpost.cli import _load, main

    job = _load(
        str(ROOT / "examples" / "copy-first-letter.yaml"),
        argparse.Namespace(steps=None, max_staleness=None, reward_workers=3),
    )
    assert job.spec.reward.pool.workers == 3
    with pytest.raises(SystemExit):
        main(["run", "x.yaml", "--reward-workers", "not-a-number"])
