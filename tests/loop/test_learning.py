"""The example learns through `rlpost run` (the real command); the sign-flipped control does
not. Chance level is 1/12 (uniform over the 12-token vocabulary); see examples/README.md."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from tests.loop.conftest import (
    EXAMPLE,
    example_raw,
    first_step_reaching,
    learning_summary,
    read_jsonl,
)

CHANCE = 1 / 12


def run_cli(job_file, run_dir, timeout_s=600):
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "rlpost.cli", "run", str(job_file), "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=timeout_s + 60,
    )
    wall = time.monotonic() - started
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return read_jsonl(run_dir / "steps.jsonl"), out.stdout, wall


@pytest.mark.slow
def test_example_learns_to_copy_the_first_letter(tmp_path):
    steps, stdout, wall = run_cli(EXAMPLE, tmp_path / "run")
    assert len(steps) == 150
    assert steps[0]["reward_mean"] < 0.3  # starts near chance
    reached = first_step_reaching(steps, 0.9)
    print(f"chance {CHANCE:.3f}; {learning_summary(steps)}; command wall {wall:.0f}s")
    assert reached is not None, [round(r["reward_mean"], 2) for r in steps]
    assert reached["elapsed_s"] <= 600
    assert sum(r["reward_mean"] for r in steps[-10:]) / 10 >= 0.9
    # One line per step on stdout, and the artefacts.
    assert stdout.count("reward ") >= 150 and "step  150/150" in stdout
    assert (tmp_path / "run" / "reward_curve.png").stat().st_size > 1000


@pytest.mark.slow
def test_flipped_advantage_sign_does_not_learn(tmp_path):
    raw = example_raw()
    raw["spec"]["algorithm"]["advantageSign"] = -1
    raw["spec"]["steps"] = 50
    job = tmp_path / "flipped.yaml"
    job.write_text(yaml.safe_dump(raw))
    steps, _, _ = run_cli(job, tmp_path / "run")
    best = max(sum(r["reward_mean"] for r in steps[i : i + 5]) / 5 for i in range(len(steps) - 4))
    last = sum(r["reward_mean"] for r in steps[-10:]) / 10
    print(f"flipped sign: best 5-step mean {best:.3f}, last-10 mean {last:.3f}")
    assert best < 0.3
    assert last < CHANCE  # pushed below chance: the gradient is real, and its sign matters
