"""Checkpoint at step k, SIGKILL every role, start again: training continues from k with the
buffer's cursor of step k and the checkpoint's weights."""

from __future__ import annotations

import time

import httpx
import torch
from rlpost_trainer import checkpoint

from tests.loop.conftest import buffer_get, example_job, read_jsonl


def test_kill_everything_and_resume_from_the_checkpoint(local_run, tmp_path):
    run_dir = tmp_path / "run"
    job = example_job(steps=8, checkpoint__interval_steps=3)
    first = local_run(job, run_dir)
    first.start()
    steps_file = run_dir / "steps.jsonl"
    deadline = time.monotonic() + 240
    # Wait until step index 3 (past checkpoint 3) is trained, then kill everything.
    while not (steps_file.exists() and len(read_jsonl(steps_file)) >= 5):
        first.procs.check_alive()
        assert time.monotonic() < deadline, "run too slow to reach step 5"
        time.sleep(0.2)
    saved_cursor_k3 = buffer_get(first, "/checkpoint", step=3)["cursor"]
    for role in list(first.procs.roles):
        first.procs.kill(role.name)
    trained_before = len(read_jsonl(steps_file))
    ckpt_root = run_dir / "trainer-state" / "checkpoints"
    # Latest complete checkpoint is 3 (6 is not reached before the kill at >= 5 steps).
    latest = checkpoint.latest_step(ckpt_root)
    assert latest in (3, 6)
    state = checkpoint.load(ckpt_root, latest)
    if latest == 3:
        assert state["cursor"] == saved_cursor_k3

    second = local_run(job, run_dir)
    second.start()
    assert second.resumed_from == latest
    result = second.follow(timeout_s=240)
    after = result.steps[trained_before:]
    assert [r["step"] for r in after] == list(range(latest, 8))

    records = buffer_get(second, "/records")
    assert records["resumes"][-1] == latest
    assert buffer_get(second, "/checkpoint", step=latest)["cursor"] == state["cursor"]
    step_k = next(s for s in records["steps"] if s["step"] == latest)
    # Step k draws prompts from the checkpoint's cursor on, none from before it.
    assert min(g["prompt_index"] for g in step_k["groups"]) >= state["cursor"]
    # Weight versions continue from k (engines got the checkpoint's weights as version k).
    assert all(g["weight_version"] >= latest for g in step_k["groups"])
    for url in second.urls["engines"]:
        assert httpx.get(f"{url}/get_weight_version", timeout=10).json()["weight_version"] == "8"
    # The resumed model started from the checkpoint: final checkpoint differs from step k's.
    final = checkpoint.load(ckpt_root, 8)["backend"]["model"]
    assert not torch.equal(final["lm_head.weight"], state["backend"]["model"]["lm_head.weight"])
