"""Must show 3 (fast part): the trainer's HF export loads with AutoModelForCausalLM /
AutoTokenizer as is and gives the trainer's logits within 1e-5; `rlpost export RUN_DIR
--step N OUT` does the same from a training checkpoint. (A run continued from an export:
tests/loop/test_learning_hf.py.)"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from rlpost_trainer import checkpoint
from rlpost_trainer.hf_export import hf_dir, save_hf
from rlpost_trainer.torch_backend import TorchBackend

from rlpost import cli
from rlpost.api import RLPostTrainJob
from rlpost.models import build_tokenizer
from tests.models.conftest import FAMILIES, job_dict, write_prompts

torch.set_num_threads(1)


def trained(job: dict) -> tuple[TorchBackend, object]:
    """The torch backend on the model directory after one real optimizer step."""
    spec = RLPostTrainJob.model_validate(job).spec
    tok = build_tokenizer(spec.model)
    be = TorchBackend()
    be.setup(spec, tok.vocab_size)
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        for p in be.model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return be, tok


def logits_of(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def check_export(out, be: TorchBackend, tok, family: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= names
    assert any(n.endswith(".safetensors") for n in names)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert model.config.model_type == family
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf_tok.chat_template == tok.tok.chat_template
    text = hf_tok.apply_chat_template(
        [{"role": "user", "content": "abcd= hgfe="}], tokenize=False, add_generation_prompt=True
    )
    ids = hf_tok.encode(text, add_special_tokens=False)
    assert ids == tok.encode(text, add_bos=False)
    want = logits_of(be.model.eval(), ids)
    diff = float((logits_of(model, ids) - want).abs().max())
    print(f"{family}: export vs trainer max |logit diff| {diff:.2e}")
    assert diff <= 1e-5
    gen = json.loads((out / "generation_config.json").read_text())
    assert set(gen["eos_token_id"]) == set(tok.eos_token_ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_trainer_export_loads_with_transformers_and_gives_the_trainers_logits(
    family, tiny_models, tmp_path
):
    be, tok = trained(job_dict(tiny_models[family], write_prompts(tmp_path / "p.jsonl")))
    out = save_hf(be.named_hf_weights(), be.spec.model, hf_dir(tmp_path / "ckpt", 7))
    assert out == tmp_path / "ckpt" / "hf" / "step-00000007"
    check_export(out, be, tok, family)


def test_rlpost_export_from_a_training_checkpoint(tiny_models, tmp_path, capsys):
    job = job_dict(tiny_models["qwen3"], write_prompts(tmp_path / "p.jsonl"))
    be, tok = trained(job)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "job.yaml").write_text(yaml.safe_dump(job))
    root = run_dir / "trainer-state" / "checkpoints"  # where `rlpost run` keeps them
    checkpoint.save(root, 3, be.state_dict(), cursor=48)

    out = tmp_path / "exported"
    assert cli.main(["export", str(run_dir), "--step", "3", str(out)]) == 0
    assert f"wrote {out} (step 3, float32)" in capsys.readouterr().out
    check_export(out, be, tok, "qwen3")

    assert cli.main(["export", str(run_dir), "--step", "4", str(tmp_path / "x")]) == 2
    assert "no checkpoint for step 4" in capsys.readouterr().err
