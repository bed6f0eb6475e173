"""Must show 4 (GPU part): the Megatron backend and the torch backend give the same GRPO loss
(relative 1e-3) for a Qwen3-architecture model directory (GQA, QK-norm, tied embeddings:
rlpost.tiny, loaded as a user's model.path), TP 1. Needs megatron-core and
GPUs: `make test-gpu`; never in CI. The measured numbers go to gpu_tests.json (record)."""

from __future__ import annotations

import pytest
import torch
from rlpost_trainer.algorithms import batch_advantages

from rlpost.api import RLPostTrainJob
from rlpost.models import build_tokenizer
from tests.gpu.helpers import record, synthetic_batch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
]

# Big enough that TP 2 splits real work; still seconds on one GPU.
QWEN3 = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 32,
}


@pytest.fixture(autouse=True)
def exact_fp32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def qwen3_job(tmp_path, backend: str, tp: int = 1) -> RLPostTrainJob:
    from rlpost.tiny import save_tiny_model

    model = tmp_path / "qwen3"
    if not (model / "config.json").exists():
        texts = ["<|im_start|>user\nabcdefgh=<|im_end|>\n", "a b c d e f g h 0 1 2 3"]
        save_tiny_model(model, "qwen3", texts, vocab_size=64, **QWEN3)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a=", "label": "a"}\n')
    return RLPostTrainJob.model_validate(
        {
            "metadata": {"name": "gpu-qwen3"},
            "spec": {
                "model": {"path": str(model), "dtype": "float32"},
                "trainer": {"backend": backend, "gpusPerPod": tp,
                            "parallelism": {"tensor": tp, "pipeline": 1}},
                "rollout": {"engine": "reference", "gpusPerEngine": 1},
                "algorithm": {"lr": 1e-3, "clip": 0.2},
                "data": {"prompts": str(prompts)},
                "seed": 0,
            },
        }
    )  # fmt: skip


def test_megatron_and_torch_give_the_same_loss_for_qwen3(tmp_path):
    from rlpost_trainer.megatron_backend import MegatronBackend
    from rlpost_trainer.torch_backend import TorchBackend

    j_t, j_m = qwen3_job(tmp_path, "torch"), qwen3_job(tmp_path, "megatron")
    vocab = build_tokenizer(j_t.spec.model).vocab_size
    t, m = TorchBackend(), MegatronBackend()
    t.setup(j_t.spec, vocab)
    m.setup(j_m.spec, vocab)
    assert (m.shape.family, m.shape.qk_norm, m.shape.tie_embeddings) == ("qwen3", True, True)
    tb = synthetic_batch(vocab)
    lp_t, lp_m = t.compute_logprobs(tb), m.compute_logprobs(tb)
    lp_diff = float((lp_t - lp_m)[tb.loss_mask.bool()].abs().max())
    g = torch.Generator().manual_seed(1)
    tb.old_logprobs = (lp_t + 0.1 * torch.randn(lp_t.shape, generator=g)) * tb.loss_mask
    adv = batch_advantages(tb)
    s_t, s_m = t.train_step(tb, adv), m.train_step(tb, adv)
    rel = abs(s_t["loss"] - s_m["loss"]) / max(abs(s_t["loss"]), 1e-12)
    after_t, after_m = dict(t.named_hf_weights()), dict(m.named_hf_weights())
    assert set(after_t) == set(after_m)  # QK-norms and the tied embedding come back
    w_diff = max(float((after_t[n] - after_m[n]).abs().max()) for n in after_t)
    record(
        "megatron_vs_torch_qwen3_fp32",
        {
            "loss_torch": s_t["loss"],
            "loss_megatron": s_m["loss"],
            "loss_rel_diff": rel,
            "logprob_max_abs_diff": lp_diff,
            "weights_after_step_max_abs_diff": w_diff,
            "gpu": torch.cuda.get_device_name(0),
        },
    )
    assert s_t["loss"] != 0.0
    assert lp_diff <= 1e-4, lp_diff
    assert rel <= 1e-3, (s_t, s_m)
    assert w_diff <= 1e-4, w_diff
