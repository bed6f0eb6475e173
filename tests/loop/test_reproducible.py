"""A seeded run reproduces: every sample is drawn with a seed fixed by (spec.seed, prompt,
sample) and a step's batch is its earliest-drawn prompts, so two `rlpost run`s of one job
sample the same responses and take the same steps, whichever engine served a request and
whatever else was in its batch."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.loop.conftest import example_raw, read_jsonl
from tests.loop.test_learning import run_cli


def responses(run_dir) -> dict[int, list[list[int]]]:
    """Prompt index -> the response tokens of its group's samples, from the buffer's log."""
    out = {}
    for line in (run_dir / "buffer-state" / "buffer.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("t") == "accept":
            g = event["group"]
            out[g["prompt_index"]] = [s["response_ids"] for s in g["samples"]]
    return out


@pytest.mark.slow
def test_two_runs_of_one_seeded_job_sample_and_train_alike(tmp_path):
    raw = example_raw()
    raw["spec"]["steps"] = 8
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw))
    runs = [tmp_path / "a", tmp_path / "b"]
    for run_dir in runs:
        run_cli(job, run_dir)
    a, b = (responses(r) for r in runs)
    assert len(a) >= 8 * raw["spec"]["algorithm"]["rolloutBatchSize"]
    assert a == b
    # Not one response repeated: the samples of a group are drawn independently.
    assert any(len({tuple(x) for x in group}) > 1 for group in a.values())
    steps_a, steps_b = (read_jsonl(r / "steps.jsonl") for r in runs)
    assert [s["reward_mean"] for s in steps_a] == [s["reward_mean"] for s in steps_b]
    assert [s["loss"] for s in steps_a] == pytest.approx([s["loss"] for s in steps_b], abs=1e-6)
