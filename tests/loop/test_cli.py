"""`rlpost validate` / `rlpost run` on bad input, and a role that dies mid-run."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest
import yaml

from rlpost.local.procs import RoleFailed
from tests.loop.conftest import EXAMPLE, example_job

RLPOST = [sys.executable, "-m", "rlpost.cli"]


def rlpost(*args, timeout=120):
    return subprocess.run([*RLPOST, *args], capture_output=True, text=True, timeout=timeout)


def test_validate_accepts_the_example():
    out = rlpost("validate", str(EXAMPLE))
    assert out.returncode == 0, out.stderr
    assert "valid RLPostTrainJob 'copy-first-letter'" in out.stdout


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s["algorithm"].update(groupSiz=4), "spec.algorithm.groupSiz: unknown field"),
        (lambda s: s["algorithm"].update(groupSize=1), "spec.algorithm.groupSize: Input should"),
        (
            lambda s: s.update(mode="colocated"),
            "colocated mode is synchronous: set rollout.maxStaleness to 0",
        ),
        (lambda s: s.pop("data"), "spec.data: required field is missing"),
    ],
)
def test_bad_specs_are_rejected_with_actionable_messages_and_nothing_starts(
    tmp_path, edit, message
):
    raw = yaml.safe_load(EXAMPLE.read_text())
    if "colocated" in message:
        raw["spec"]["rollout"]["maxStaleness"] = 1
    edit(raw["spec"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    out = rlpost("validate", str(bad))
    assert out.returncode == 2 and message in out.stderr, out.stderr
    run_dir = tmp_path / "never"
    out = rlpost("run", str(bad), "--run-dir", str(run_dir))
    assert out.returncode == 2 and message in out.stderr
    assert not run_dir.exists()


def test_missing_dataset_is_caught_before_starting(tmp_path):
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["spec"]["data"]["prompts"] = "nowhere.jsonl"
    bad = tmp_path / "job.yaml"
    bad.write_text(yaml.safe_dump(raw))
    out = rlpost("run", str(bad), "--run-dir", str(tmp_path / "r"))
    assert out.returncode == 2 and "nowhere.jsonl does not exist" in out.stderr
    assert not (tmp_path / "r").exists()


def test_a_dying_role_is_named_with_its_log_and_everything_stops(local_run):
    run = local_run(example_job(steps=1000))
    run.start()
    # The trainer serves its metrics while it trains.
    deadline = time.monotonic() + 60
    while True:
        try:
            text = httpx.get(run.urls["trainer_metrics"], timeout=5).text
            if 'rlpost_train_step{job="copy-first-letter"}' in text:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "trainer metrics never appeared"
        time.sleep(0.5)
    assert "rlpost_weight_sync_seconds_bucket" in text and "rlpost_reward_mean" in text
    run.procs.kill("engine-1")
    with pytest.raises(RoleFailed) as err:
        run.follow(timeout_s=60)
    assert "role engine-1 exited" in str(err.value)
    assert "engine-1.log" in str(err.value)
    run.stop()
    for role in run.procs.roles:
        assert role.proc.poll() is not None, f"{role.name} still running"
