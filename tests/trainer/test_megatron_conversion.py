"""HF Llama <-> Megatron-core layouts, on CPU tensors (no megatron import needed).

The checks compute what Megatron computes from its fused tensors (its QKV split per query
group, its per-rank [gate; up] chunking) and compare with the HF projections, so a wrong
layout fails here even though a plain round trip would still pass.
"""

from __future__ import annotations

import pytest
import torch
from rlpost_trainer.megatron.convert import (
    LlamaShape,
    fuse_gate_up,
    fuse_qkv,
    hf_to_megatron,
    megatron_to_hf,
    parse_name,
    stage_layers,
)

from rlpost.api import ModelSource
from rlpost.models import build_model

GQA = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32,
}


def hf_model(**overrides):
    source = ModelSource(config={**GQA, **overrides}, tokenizer="char:abcdefgh=", dtype="float32")
    torch.manual_seed(0)
    return build_model(source, vocab_size=12, seed=0)


def megatron_qkv_forward(x, qkv_shard, s: LlamaShape, tp: int):
    """Megatron SelfAttention.get_query_key_value_tensors on one TP rank's shard."""
    groups = s.kv_heads // tp
    mixed = x @ qkv_shard.T  # [T, groups * (q_per_group + 2) * d]
    mixed = mixed.view(x.shape[0], groups, (s.q_per_group + 2) * s.head_dim)
    q, k, v = torch.split(mixed, [s.q_per_group * s.head_dim, s.head_dim, s.head_dim], dim=-1)
    return q.reshape(x.shape[0], -1), k.reshape(x.shape[0], -1), v.reshape(x.shape[0], -1)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_round_trip_is_exact_for_every_tp_size(tp):
    model = hf_model()
    s = LlamaShape.from_hf_config(model.config)
    hf = {n: t.detach().clone() for n, t in model.state_dict().items()}
    ranks = hf_to_megatron(hf, s, tp)
    assert len(ranks) == tp
    back = dict(megatron_to_hf(ranks, s))
    assert set(back) == set(hf)
    for name, t in hf.items():
        assert back[name].shape == t.shape, name
        assert torch.equal(back[name], t), name


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_fused_qkv_shards_compute_the_hf_projections(tp):
    model = hf_model()
    s = LlamaShape.from_hf_config(model.config)
    hf = model.state_dict()
    ranks = hf_to_megatron(hf, s, tp)
    x = torch.randn(5, s.hidden)
    p = "model.layers.1.self_attn."
    want_q, want_k, want_v = (x @ hf[p + f"{w}_proj.weight"].T for w in "qkv")
    got = [megatron_qkv_forward(x, r["decoder.layers.1.self_attention.linear_qkv.weight"], s, tp)
           for r in ranks]  # fmt: skip
    # Rank r holds query groups r*G/tp.. : its heads are a contiguous block of HF heads.
    assert torch.allclose(torch.cat([g[0] for g in got], -1), want_q, atol=1e-5)
    assert torch.allclose(torch.cat([g[1] for g in got], -1), want_k, atol=1e-5)
    assert torch.allclose(torch.cat([g[2] for g in got], -1), want_v, atol=1e-5)
    # ... and the row-parallel output projection takes exactly those heads' columns.
    o = hf[p + "o_proj.weight"]
    attn_out = torch.randn(5, s.heads * s.head_dim)
    parts = [a @ r["decoder.layers.1.self_attention.linear_proj.weight"].T
             for a, r in zip(attn_out.chunk(tp, -1), ranks, strict=True)]  # fmt: skip
    assert torch.allclose(sum(parts), attn_out @ o.T, atol=1e-5)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_fc1_shards_compute_swiglu_like_the_hf_mlp(tp):
    model = hf_model()
    s = LlamaShape.from_hf_config(model.config)
    hf = model.state_dict()
    ranks = hf_to_megatron(hf, s, tp)
    x = torch.randn(4, s.hidden)
    p = "model.layers.2.mlp."
    want = (
        torch.nn.functional.silu(x @ hf[p + "gate_proj.weight"].T)
        * (x @ hf[p + "up_proj.weight"].T)
    ) @ hf[p + "down_proj.weight"].T
    out = 0
    for r in ranks:  # Megatron MLP per rank: fc1 -> chunk(2) -> silu(a) * b -> fc2 (row-parallel)
        a, b = (x @ r["decoder.layers.2.mlp.linear_fc1.weight"].T).chunk(2, -1)
        out = (
            out + (torch.nn.functional.silu(a) * b) @ r["decoder.layers.2.mlp.linear_fc2.weight"].T
        )
    assert torch.allclose(out, want, atol=1e-5)


def test_gathered_fc1_interleaves_ranks_and_qkv_groups_queries_first():
    gate = torch.arange(4.0)[:, None].expand(4, 2)
    up = 10 + torch.arange(4.0)[:, None].expand(4, 2)
    assert fuse_gate_up(gate, up, 2)[:, 0].tolist() == [0, 1, 10, 11, 2, 3, 12, 13]
    s = LlamaShape(1, 2, heads=4, kv_heads=2, head_dim=1, ffn=4, vocab=4)
    q = torch.tensor([[0.0, 0], [1, 1], [2, 2], [3, 3]])
    k = torch.tensor([[10.0, 10], [11, 11]])
    v = torch.tensor([[20.0, 20], [21, 21]])
    assert fuse_qkv(q, k, v, s)[:, 0].tolist() == [0, 1, 10, 20, 2, 3, 11, 21]


def test_megatron_names_sharding_and_hf_names():
    model = hf_model()
    s = LlamaShape.from_hf_config(model.config)
    ranks = hf_to_megatron(model.state_dict(), s, 2)
    r0 = ranks[0]
    assert r0["embedding.word_embeddings.weight"].shape == (6, 64)  # vocab-parallel
    assert r0["output_layer.weight"].shape == (6, 64)
    assert r0["decoder.layers.0.self_attention.linear_qkv.weight"].shape == (2 * (2 + 2) * 8, 64)
    assert r0["decoder.layers.0.self_attention.linear_proj.weight"].shape == (64, 32)
    assert r0["decoder.layers.0.mlp.linear_fc1.weight"].shape == (96, 64)
    assert r0["decoder.layers.0.mlp.linear_fc2.weight"].shape == (64, 48)
    assert torch.equal(
        r0["decoder.final_layernorm.weight"], ranks[1]["decoder.final_layernorm.weight"]
    )
    assert parse_name("module.decoder.layers.7.mlp.linear_fc2.weight")[:3] == (
        7, "mlp.linear_fc2.weight", 1,
    )  # fmt: skip
    # The Transformer Engine spec's fused norm names map to the same HF norms.
    te = hf_to_megatron(model.state_dict(), s, 1, fused_norms=True)
    back = dict(megatron_to_hf(te, s))
    assert torch.equal(back["model.layers.2.input_layernorm.weight"],
                       model.state_dict()["model.layers.2.input_layernorm.weight"])  # fmt: skip
    with pytest.raises(KeyError):
        parse_name("decoder.layers.0.self_attention.q_proj.weight")


def test_pipeline_stage_layers_are_numbered_locally_and_offset_back():
    model = hf_model()
    s = LlamaShape.from_hf_config(model.config)
    hf = model.state_dict()
    stage = hf_to_megatron(hf, s, 1, layers=range(2, 3), first_stage=False, last_stage=True)[0]
    assert "decoder.layers.0.mlp.linear_fc2.weight" in stage
    assert "embedding.word_embeddings.weight" not in stage
    back = dict(megatron_to_hf([stage], s, layer_offset=2))
    assert torch.equal(
        back["model.layers.2.mlp.down_proj.weight"], hf["model.layers.2.mlp.down_proj.weight"]
    )
    assert "model.layers.0.mlp.down_proj.weight" not in back


def test_stages_split_layers_evenly_and_together_give_back_every_hf_tensor_in_order():
    model = hf_model(num_hidden_layers=4, tie_word_embeddings=False)
    s = LlamaShape.from_hf_config(model.config)
    hf = {n: t for n, t in model.state_dict().items() if "rotary" not in n}
    assert [stage_layers(s, 2, k) for k in (0, 1)] == [range(0, 2), range(2, 4)]
    out = []
    for k in (0, 1):
        layers = stage_layers(s, 2, k)
        stage = hf_to_megatron(hf, s, 1, layers=layers, first_stage=k == 0, last_stage=k == 1)
        out += list(megatron_to_hf(stage, s, layer_offset=layers.start))
    # Stage 0 then stage 1 is HF order (what the engines pack), and nothing is lost.
    assert [n for n, _ in out] == [n for n, _ in model.named_parameters()]
    assert all(torch.equal(t, hf[n]) for n, t in out)


def test_pipeline_splits_that_cannot_work_are_refused_with_the_reason():
    s = LlamaShape.from_hf_config(hf_model(tie_word_embeddings=False).config)  # 3 layers
    with pytest.raises(ValueError, match="3 layers cannot be split evenly into 2"):
        stage_layers(s, 2, 0)
    tied = LlamaShape.from_hf_config(hf_model(num_hidden_layers=4, tie_word_embeddings=True).config)
    assert tied.tie_embeddings
    with pytest.raises(ValueError, match="tied word embeddings"):
        stage_layers(tied, 2, 0)
    assert stage_layers(tied, 1, 0) == range(4)  # one stage: ties are fine


def test_tp_that_does_not_divide_the_heads_is_refused():
    model = hf_model()
    s = LlamaShape.from_hf_config(model.config)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        hf_to_megatron(model.state_dict(), s, 8)
