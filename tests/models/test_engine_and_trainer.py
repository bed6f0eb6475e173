"""Must show 1: tiny Qwen3 / Llama-3 directories (save_pretrained + a locally trained BPE
tokenizer with a chat template) load in the engine and the trainer; the engine's logprobs
equal transformers' forward of the same directory (fp32, 1e-5); after a weight sync engine
and trainer agree within 1e-4. Also: EOS from the generation config, maxNewTokens and stop
strings are honoured by the engine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from rlpost_trainer.batch import TrainBatch
from rlpost_trainer.torch_backend import TorchBackend

from rlpost.api import RLPostTrainJob
from rlpost.local.procs import Processes, Role
from rlpost.local.runner import free_port
from rlpost.models import build_tokenizer
from rlpost.weightsync import WeightSender
from tests.models.conftest import FAMILIES, job_dict, write_prompts

torch.set_num_threads(1)
TOKEN = "hf-test-token"


@pytest.fixture
def engine(tmp_path):
    procs = Processes()

    def start(job: dict) -> str:
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(job))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RLPOST_")},
            "RLPOST_CONFIG": str(path),
            "RLPOST_TOKEN": TOKEN,
            "RLPOST_TORCH_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
        }
        port = free_port()
        argv = [sys.executable, "-m", "rlpost_rollout.engine", "--host", "127.0.0.1",
                "--port", str(port)]  # fmt: skip
        role = Role("engine", argv, env, Path(tmp_path, "engine.log"),
                    f"http://127.0.0.1:{port}/health")  # fmt: skip
        procs.start(role)
        procs.wait_healthy([role], timeout_s=180)
        return f"http://127.0.0.1:{port}"

    yield start
    procs.stop_all(grace_s=5)


def hf_logprobs(model_dir: Path, ids: list[int]) -> torch.Tensor:
    """transformers' own forward of the directory: log p(ids[i] | ids[:i]), i >= 1."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def engine_logprobs(url: str, ids: list[int]) -> torch.Tensor:
    body = {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
        "return_logprob": True,
        "logprob_start_len": 0,
    }
    r = httpx.post(f"{url}/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    lps = r.json()["meta_info"]["input_token_logprobs"]
    return torch.tensor([lp for lp, _, _ in lps[1:]])


def trainer_logprobs(be: TorchBackend, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids])
    tb = TrainBatch(x, torch.ones_like(x), x[:, 1:], None, None, None, None, 1, 0, 0)
    return be.compute_logprobs(tb)[0]


def generate(url: str, ids: list[int], **sampling) -> dict:
    body = {"input_ids": ids, "sampling_params": {"temperature": 0.0, **sampling}}
    r = httpx.post(f"{url}/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("family", FAMILIES)
def test_engine_and_trainer_load_the_directory_and_agree(family, tiny_models, engine, tmp_path):
    model_dir = tiny_models[family]
    job = job_dict(model_dir, write_prompts(tmp_path / "p.jsonl"))
    url = engine(job)
    info = httpx.get(f"{url}/model_info", timeout=10).json()
    assert info["model_type"] == family
    spec = RLPostTrainJob.model_validate(job).spec
    tok = build_tokenizer(spec.model)
    ids = tok.encode(tok.render_chat([{"role": "user", "content": "abcd= hgfe="}]), add_bos=False)

    # 1. The engine computes what transformers computes from the same directory.
    want = hf_logprobs(model_dir, ids)
    got = engine_logprobs(url, ids)
    diff = float((got - want).abs().max())
    print(f"{family}: engine vs transformers max |logprob diff| {diff:.2e} over {len(ids)} ids")
    assert diff <= 1e-5

    # 2. The trainer loads the same directory (same logprobs), trains away from it, and
    # after a push the engine holds the trainer's weights.
    be = TorchBackend()
    be.setup(spec, tok.vocab_size)
    assert float((trainer_logprobs(be, ids) - want).abs().max()) <= 1e-5
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in be.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    moved = trainer_logprobs(be, ids)
    assert float((engine_logprobs(url, ids) - moved).abs().max()) > 1e-2
    sender = WeightSender([url], token=TOKEN, backend="gloo", bucket_mb=0.02)
    try:
        sender.push(be.named_hf_weights(), weight_version=3)
    finally:
        sender.close()
    diff = float((engine_logprobs(url, ids) - moved).abs().max())
    print(f"{family}: engine vs trainer after weight sync {diff:.2e}")
    assert diff <= 1e-4


def test_engine_stops_on_generation_config_eos_and_honours_limits(tiny_models, engine, tmp_path):
    """Llama 3: the tokenizer's eos is <|end_of_text|>; a turn ends at <|eot_id|>, named only
    by generation_config.json. maxNewTokens and stop strings are honoured."""
    model_dir = tiny_models["llama"]
    spec = RLPostTrainJob.model_validate(job_dict(model_dir, tmp_path / "p.jsonl")).spec
    tok = build_tokenizer(spec.model)
    eot = tok.tok.convert_tokens_to_ids("<|eot_id|>")
    assert tok.tok.eos_token == "<|end_of_text|>" and eot in tok.eos_token_ids

    # A copy of the model whose greedy answer to the prompt is <|eot_id|> (its lm_head row
    # points along the prompt's last hidden state).
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tok.encode(tok.render_chat([{"role": "user", "content": "abcd="}]), add_bos=False)
    with torch.no_grad():
        h = model.model(torch.tensor([ids])).last_hidden_state[0, -1]
        model.lm_head.weight[eot] = 100.0 * h / h.norm()
    eos_dir = tmp_path / "eot-model"
    model.save_pretrained(eos_dir)
    tok.save(eos_dir)
    gen_cfg = (model_dir / "generation_config.json").read_text()
    (eos_dir / "generation_config.json").write_text(gen_cfg)
    url = engine(job_dict(eos_dir, write_prompts(tmp_path / "p.jsonl")))

    out = generate(url, ids, max_new_tokens=8)
    assert out["output_ids"] == [eot], out
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": eot}
    # ignore_eos: the same request runs to maxNewTokens exactly.
    out = generate(url, ids, max_new_tokens=5, ignore_eos=True)
    assert len(out["output_ids"]) == 5
    assert out["meta_info"]["finish_reason"]["type"] == "length"
    # A stop string: the answer ends where it appears, trimmed from the text.
    free = generate(url, ids, max_new_tokens=12, ignore_eos=True)
    specials = set(tok.tok.all_special_ids)
    pick = next(
        i
        for i, t in enumerate(free["output_ids"])
        if i >= 2 and t not in specials and tok.decode([t]).strip()
    )
    stop = tok.decode([free["output_ids"][pick]])
    cut = generate(url, ids, max_new_tokens=12, ignore_eos=True, stop=[stop])
    assert cut["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert len(cut["output_ids"]) <= pick + 1
    assert free["text"].startswith(cut["text"]) and not cut["text"].endswith(stop)
