"""The arithmetic word-problem example: generated deterministically (the committed file is
the generator's output), every label is its expression's value, Math-Verify grades the
answers, and the job runs through `rlpost run` (messages -> chat template in the buffer ->
engine -> math reward)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import yaml

from tests.models.conftest import ROOT

EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
import make_arithmetic  # noqa: E402


def rows() -> list[dict]:
    return [json.loads(x) for x in (EXAMPLES / "arithmetic.jsonl").read_text().splitlines()]


def test_committed_file_is_the_generators_output_and_labels_are_right():
    got = rows()
    rng = random.Random(0)
    assert got == [make_arithmetic.problem(rng) for _ in range(make_arithmetic.ROWS)]
    for row in got:
        value = eval(row["expression"], {"__builtins__": {}}, {})  # noqa: S307
        assert value == int(row["label"]), row
        assert [m["role"] for m in row["messages"]] == ["system", "user"]
    assert len({r["messages"][1]["content"] for r in got}) > 0.95 * len(got)


def test_math_verify_grades_the_examples_answers():
    from rlpost_rollout.rewards.builtin import math_answer

    for row in rows()[:20]:
        label = row["label"]
        assert math_answer("", f"So the total is \\boxed{{{label}}}.", label) == 1.0
        assert math_answer("", f"The answer is {int(label) + 1}", label) == 0.0


@pytest.mark.slow
def test_the_example_runs_with_a_tiny_qwen3(tmp_path):
    from rlpost.tiny import corpus_from_jsonl, save_tiny_model

    model = save_tiny_model(
        tmp_path / "tiny-qwen3-arith",
        "qwen3",
        corpus_from_jsonl(EXAMPLES / "arithmetic.jsonl", "qwen3"),
        vocab_size=256,
    )
    raw = yaml.safe_load((EXAMPLES / "arithmetic-qwen3.yaml").read_text())
    raw["spec"]["model"]["path"] = str(model)
    raw["spec"]["data"]["prompts"] = str(EXAMPLES / "arithmetic.jsonl")
    raw["spec"]["steps"] = 2
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "rlpost.cli", "run", str(job), "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    steps = [json.loads(x) for x in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 2 and all(0.0 <= s["reward_mean"] <= 1.0 for s in steps)
    buffer_log = (run_dir / "logs" / "buffer.log").read_text()
    assert "reward failed" not in buffer_log and "rejected" not in buffer_log
    # The final HF export (after the last step) is there.
    assert (run_dir / "trainer-state" / "checkpoints" / "hf" / "step-00000002").is_dir()
