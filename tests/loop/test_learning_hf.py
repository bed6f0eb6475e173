"""Must show 2 and 3 (slow): the copy-first-letter task through a Qwen3-architecture model
directory (save_pretrained, a BPE tokenizer trained here, Qwen's chat template applied by the
buffer) learns to >= 0.9 with `rlpost run`; the run's final HF export loads with transformers
and a run started from it continues where the policy left off. Chance level: ~1/40 (the
tokenizer's vocabulary)."""

from __future__ import annotations

import os

import pytest
import yaml

from tests.loop.conftest import first_step_reaching, learning_summary
from tests.loop.test_learning import run_cli
from tests.models.conftest import ROOT

EXAMPLE = ROOT / "examples" / "copy-first-letter-qwen3.yaml"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def job_file(tmp_path, model_dir, **spec_updates):
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["spec"]["model"]["path"] = str(model_dir)
    raw["spec"]["data"]["prompts"] = str(EXAMPLE.parent / raw["spec"]["data"]["prompts"])
    raw["spec"].update(spec_updates)
    path = tmp_path / f"job-{len(list(tmp_path.glob('job-*')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from rlpost.tiny import corpus_from_jsonl, save_tiny_model

    tmp = tmp_path_factory.mktemp("qwen3-learning")
    data = EXAMPLE.parent / "copy-first-letter.jsonl"
    # Exactly what the example's comment tells a user to run.
    model = save_tiny_model(
        tmp / "tiny-qwen3-copy", "qwen3", corpus_from_jsonl(data, "qwen3"), vocab_size=40
    )
    run_dir = tmp / "run"
    steps, stdout, wall = run_cli(job_file(tmp, model), run_dir, timeout_s=1800)
    return tmp, run_dir, steps, stdout, wall


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the run (in the module fixture) is ~15 min on 2 loaded cores
def test_qwen3_architecture_model_learns_copy_first_letter(trained_run):
    _, run_dir, steps, stdout, wall = trained_run
    total = yaml.safe_load(EXAMPLE.read_text())["spec"]["steps"]
    assert len(steps) == total
    assert steps[0]["reward_mean"] < 0.3  # starts near chance
    reached = first_step_reaching(steps, 0.9)
    print(f"qwen3 copy-first-letter: {learning_summary(steps)}; command wall {wall:.0f}s")
    assert reached is not None, [round(r["reward_mean"], 2) for r in steps]
    assert sum(r["reward_mean"] for r in steps[-10:]) / 10 >= 0.9
    # HF exports every checkpoint.hfIntervalSteps and after the last step.
    hf = run_dir / "trainer-state" / "checkpoints" / "hf"
    every = yaml.safe_load(EXAMPLE.read_text())["spec"]["checkpoint"]["hfIntervalSteps"]
    want = sorted({*range(every, total + 1, every), total})
    assert sorted(p.name for p in hf.iterdir()) == [f"step-{s:08d}" for s in want]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_final_hf_export_loads_and_a_run_from_it_continues(trained_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp, run_dir, steps, _, _ = trained_run
    total = len(steps)
    export = run_dir / "trainer-state" / "checkpoints" / "hf" / f"step-{total:08d}"
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(export)
    # The exported policy answers the task greedily.
    right = 0
    for word in ("dbca", "hgfe", "abcd", "egab", "fhcd", "cdef", "gabc", "bbbb"):
        text = tok.apply_chat_template(
            [{"role": "user", "content": word + "="}], tokenize=False, add_generation_prompt=True
        )
        ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
        with torch.no_grad():
            nxt = int(model(ids).logits[0, -1].argmax())
        right += tok.decode([nxt]) == word[0]
    assert right >= 7, right
    # A new run whose model.path is the export starts from the trained policy.
    cont_dir = tmp / "continued"
    cont, _, _ = run_cli(job_file(tmp, export, steps=5), cont_dir, timeout_s=600)
    print(f"continued from {export.name}: rewards {[round(r['reward_mean'], 2) for r in cont]}")
    assert len(cont) == 5
    # The trained weights, not chance (0.025) nor a random init's first steps (<= 0.05). The
    # small policy is confidently wrong on a few prompts (whole groups at 0: measured 0.77 on
    # the first 16 prompts of one run, 0.91 over the 5 steps), so the first step's bar is
    # 20x chance and the 5 steps' mean must be that of a trained policy.
    curve = [round(r["reward_mean"], 2) for r in cont]
    assert cont[0]["reward_mean"] >= 0.5, curve
    assert sum(r["reward_mean"] for r in cont) / 5 >= 0.8, curve
