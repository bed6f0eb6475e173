"""`rlpost run` in colocated mode on the CPU: trainer and engines share the host; per step the
engines pause and release their memory, the trainer trains, the engines resume and take the
new weights through /update_weights_from_tensor over shared memory (rlpost.weightsync.
colocated, the path CUDA IPC takes on a GPU)."""

from __future__ import annotations

import pytest
import yaml

from tests.loop.conftest import example_raw, first_step_reaching, learning_summary
from tests.loop.test_learning import run_cli


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_colocated_example_learns(tmp_path):
    raw = example_raw()
    raw["spec"]["mode"] = "colocated"
    raw["spec"]["steps"] = 100  # >= 0.9 from about step 66 on 2 CPU cores
    job = tmp_path / "colocated.yaml"
    job.write_text(yaml.safe_dump(raw))
    # ~4 s a step on 2 idle CPU cores (release/resume around every step), much more when the
    # machine is busy: 82 steps in 600 s once under a load average of 15.
    steps, stdout, wall = run_cli(job, tmp_path / "run", timeout_s=1600)
    assert "placement: colocated: the trainer and the engines share the CPU" in stdout
    assert "weight sync: ipc" in stdout
    assert len(steps) == raw["spec"]["steps"]
    reached = first_step_reaching(steps, 0.9)
    last = sum(r["reward_mean"] for r in steps[-10:]) / 10
    sync = sorted(r["sync_ms"] for r in steps)[len(steps) // 2]
    release = sorted(r["release_ms"] for r in steps)[len(steps) // 2]
    print(
        f"colocated: {learning_summary(steps)}; median sync {sync:.1f} ms, "
        f"release {release:.1f} ms; wall {wall:.0f}s"
    )
    assert steps[0]["reward_mean"] < 0.3
    assert reached is not None, [round(r["reward_mean"], 2) for r in steps]
    assert last >= 0.9
    # Every step released the engines before training and synced after it.
    assert all(r["release_ms"] > 0 and r["resume_ms"] > 0 and r["sync_ms"] > 0 for r in steps)
