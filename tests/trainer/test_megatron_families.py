"""Must show 4 (CPU part): HF -> Megatron -> HF is exact for the Llama, Qwen2 and Qwen3
families (GQA, q/k/v bias, QK-norm, tied embeddings), and the fused tensors compute what the
HF projections compute; a family without a conversion is refused by name."""

from __future__ import annotations

import pytest
import torch
from rlpost_trainer.megatron.convert import (
    FAMILIES,
    UnsupportedFamily,
    hf_to_megatron,
    megatron_to_hf,
    shape_for,
    stage_layers,
)

from rlpost.api import ModelSource
from rlpost.models import ModelError, build_model, family_config

BASE = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,  # GQA: 2 query heads per KV group
    "head_dim": 8,
    "max_position_embeddings": 32,
}
CASES = {
    "llama": {"tie_word_embeddings": False},
    "qwen2": {"tie_word_embeddings": False},
    "qwen3": {"tie_word_embeddings": True},
}


def hf_model(family: str, **overrides):
    cfg = {**BASE, **CASES[family], "model_type": family, **overrides}
    source = ModelSource(config=cfg, tokenizer="char:abcdefgh=", dtype="float32")
    model = build_model(source, vocab_size=12, seed=0)
    with torch.no_grad():  # norms and biases start as 1 / 0: make them tell layouts apart
        g = torch.Generator().manual_seed(3)
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def test_every_family_in_the_table_is_tested():
    assert set(FAMILIES) == set(CASES)


@pytest.mark.parametrize("family", sorted(CASES))
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_round_trip_is_exact_and_in_hf_order(family, tp):
    model = hf_model(family)
    s = shape_for(model.config)
    assert (s.family, s.qkv_bias, s.qk_norm) == (
        family, family == "qwen2", family == "qwen3",
    )  # fmt: skip
    assert s.tie_embeddings == (family == "qwen3")
    hf = {n: p.detach().clone() for n, p in model.named_parameters()}
    ranks = hf_to_megatron(hf, s, tp)
    names = set(ranks[0])
    assert ("output_layer.weight" in names) == (not s.tie_embeddings)
    assert any("linear_qkv.bias" in n for n in names) == s.qkv_bias
    assert any("q_layernorm" in n for n in names) == s.qk_norm
    back = list(megatron_to_hf(ranks, s))
    # Exactly the model's parameters (a tied lm_head is the embedding), in its own order.
    assert [n for n, _ in back] == list(hf)
    for name, t in back:
        assert torch.equal(t, hf[name]), name


@pytest.mark.parametrize("family", sorted(CASES))
def test_pipeline_stages_give_back_every_tensor(family):
    model = hf_model(family, tie_word_embeddings=False)
    s = shape_for(model.config)
    hf = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = []
    for k in (0, 1):
        layers = stage_layers(s, 2, k)
        stage = hf_to_megatron(hf, s, 2, layers=layers, first_stage=k == 0, last_stage=k == 1)
        out += list(megatron_to_hf(stage, s, layer_offset=layers.start))
    assert [n for n, _ in out] == list(hf)
    assert all(torch.equal(t, hf[n]) for n, t in out)


@pytest.mark.parametrize("tp", [1, 2])
def test_qwen2_fused_bias_adds_the_hf_biases_per_rank(tp):
    """Megatron's per-rank QKV split of (x @ W.T + b) equals HF's q/k/v projections."""
    model = hf_model("qwen2")
    s = shape_for(model.config)
    hf = dict(model.named_parameters())
    ranks = hf_to_megatron(hf, s, tp)
    x = torch.randn(3, s.hidden)
    p, m = "model.layers.1.self_attn.", "decoder.layers.1.self_attention.linear_qkv."
    want = [x @ hf[p + f"{w}_proj.weight"].T + hf[p + f"{w}_proj.bias"] for w in "qkv"]
    got_q, got_k, got_v = [], [], []
    groups = s.kv_heads // tp
    for r in ranks:
        mixed = (x @ r[m + "weight"].T + r[m + "bias"]).view(3, groups, -1)
        q, k, v = torch.split(mixed, [s.q_per_group * s.head_dim, s.head_dim, s.head_dim], -1)
        got_q.append(q.reshape(3, -1))
        got_k.append(k.reshape(3, -1))
        got_v.append(v.reshape(3, -1))
    for got, w in zip((got_q, got_k, got_v), want, strict=True):
        assert torch.allclose(torch.cat(got, -1), w, atol=1e-5)


def test_qwen3_qk_norms_are_replicated_per_head():
    model = hf_model("qwen3")
    s = shape_for(model.config)
    hf = dict(model.named_parameters())
    ranks = hf_to_megatron(hf, s, 2)
    for r in ranks:
        q = r["decoder.layers.0.self_attention.q_layernorm.weight"]
        assert q.shape == (s.head_dim,)
        assert torch.equal(q, hf["model.layers.0.self_attn.q_norm.weight"])
        assert torch.equal(
            r["decoder.layers.0.self_attention.k_layernorm.weight"],
            hf["model.layers.0.self_attn.k_norm.weight"],
        )


@pytest.mark.parametrize("model_type", ["mistral", "gemma2", "phi3"])
def test_a_family_without_a_conversion_is_refused_by_name(model_type):
    cfg = family_config(ModelSource(config={**BASE, "model_type": model_type}), None, 12)
    with pytest.raises(UnsupportedFamily, match=f"model_type '{model_type}'") as err:
        shape_for(cfg)
    assert "llama, qwen2, qwen3" in str(err.value) and "trainer.backend: torch" in str(err.value)
    assert isinstance(err.value, ModelError)  # a spec error: exit 78, InvalidSpec


def test_llama_with_projection_biases_is_refused():
    cfg = family_config(ModelSource(config={**BASE, "attention_bias": True}), None, 12)
    with pytest.raises(UnsupportedFamily, match="attention_bias"):
        shape_for(cfg)


@pytest.mark.parametrize("tp, pp", [(1, 1), (2, 1), (2, 2)])
def test_rlpost_export_reads_a_megatron_checkpoint(tp, pp, tmp_path):
    """`rlpost export` of a Megatron checkpoint (one state.pt, or a shard file per TP/PP rank
    as checkpoint.py writes them) gives back the HF weights exactly."""
    from rlpost_trainer.hf_export import hf_weights_from_checkpoint

    cfg = {**BASE, **CASES["qwen3"], "model_type": "qwen3", "tie_word_embeddings": pp == 1}
    source = ModelSource(config=cfg, tokenizer="char:abcdefgh=", dtype="float32")
    model = build_model(source, vocab_size=12, seed=0)
    s = shape_for(model.config)
    hf = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = tmp_path / "step-00000004"
    step.mkdir()
    backend_state = None
    for stage in range(pp):
        layers = stage_layers(s, pp, stage)
        ranks = hf_to_megatron(
            hf, s, tp, layers=layers, first_stage=stage == 0, last_stage=stage == pp - 1
        )
        for r, params in enumerate(ranks):
            params = {**params, "decoder.layers.0.self_attention.core_attention._extra_state": None}
            state = {"backend": {"model": params, "optimizer": {}}, "rng": {}}
            if tp * pp == 1:
                backend_state = state["backend"]
            else:
                torch.save(state, step / f"shard-tp{r}-pp{stage}.pt")
    torch.save({"step": 4, "cursor": 0, "backend": backend_state, "rng": {}}, step / "state.pt")
    back = hf_weights_from_checkpoint(step, source, "megatron", vocab_size=12)
    assert [n for n, _ in back] == list(hf)
    assert all(torch.equal(t, hf[n]) for n, t in back)
