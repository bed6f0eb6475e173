"""HF <-> Megatron-core GPTModel parameter names and layouts (pure torch), per model family.

Families (`FAMILIES`, keyed by the HF config's `model_type`): `llama` (Llama 2/3: GQA, tied
embeddings in the small 3.x models), `qwen2` (bias on q/k/v), `qwen3` (QK-norm: RMSNorm of
each head's queries and keys). Any other `model_type` is refused by `shape_for` with the
list of known ones: its layout is not known to be one of these.

Megatron fuses and shards what HF keeps apart:

- attention: `linear_qkv.weight` is [(q_per_group + 2) * groups * head_dim, hidden] grouped
  by query group: for each KV group g, the q heads of g, then k_g, then v_g. Tensor
  parallelism splits it on dim 0 by whole groups (rank r holds groups r*G/tp ..).
- MLP: `linear_fc1.weight` is [2 * ffn, hidden]; on each TP rank it holds [gate_r; up_r]
  (the rank's slices of gate_proj and up_proj), so the gathered tensor interleaves ranks.
- row-parallel `linear_proj` / `linear_fc2` split on dim 1; embedding and output layer
  (vocab-parallel) on dim 0; norms are replicated.
- q/k/v bias (qwen2): `linear_qkv.bias`, grouped like the weight. QK-norm (qwen3):
  `self_attention.q_layernorm.weight` / `k_layernorm.weight` ([head_dim], replicated).
- tied embeddings: no `output_layer.weight` (Megatron shares the embedding), no HF `lm_head`.

Both the local layer spec (`input_layernorm`, `pre_mlp_layernorm`) and the Transformer Engine
spec (norms fused into `linear_qkv.layer_norm_weight` / `linear_fc1.layer_norm_weight`) are
understood. Layer numbers in Megatron names are local to a pipeline stage (`layer_offset`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from rlpost.models import ModelError


@dataclass(frozen=True)
class Family:
    """What a HF model family adds to the Llama layout (Megatron: add_qkv_bias,
    qk_layernorm)."""

    qkv_bias: bool = False
    qk_norm: bool = False


FAMILIES: dict[str, Family] = {
    "llama": Family(),
    "qwen2": Family(qkv_bias=True),
    "qwen3": Family(qk_norm=True),
}


class UnsupportedFamily(ModelError):
    """A model family without a conversion (the spec cannot run on this backend)."""


@dataclass(frozen=True)
class LlamaShape:
    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tie_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    family: str = "llama"

    @classmethod
    def from_hf_config(cls, cfg: Any) -> LlamaShape:
        model_type = getattr(cfg, "model_type", "llama")
        family = FAMILIES.get(model_type)
        if family is None:
            raise UnsupportedFamily(
                f"trainer.backend megatron: model_type {model_type!r} "
                f"({(getattr(cfg, 'architectures', None) or ['?'])[0]}) has no HF <-> Megatron "
                f"conversion; known families: {', '.join(sorted(FAMILIES))}. Use "
                "trainer.backend: torch for it"
            )
        if model_type == "llama" and (
            getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False)
        ):
            raise UnsupportedFamily(
                "trainer.backend megatron: a llama config with attention_bias / mlp_bias has "
                "biases on every projection, which the conversion does not carry"
            )
        heads = int(cfg.num_attention_heads)
        head_dim = getattr(cfg, "head_dim", None) or int(cfg.hidden_size) // heads
        return cls(
            num_layers=int(cfg.num_hidden_layers),
            hidden=int(cfg.hidden_size),
            heads=heads,
            kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
            head_dim=int(head_dim),
            ffn=int(cfg.intermediate_size),
            vocab=int(cfg.vocab_size),
            tie_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
            qkv_bias=family.qkv_bias,
            qk_norm=family.qk_norm,
            family=model_type,
        )

    @property
    def q_per_group(self) -> int:
        return self.heads // self.kv_heads

    def check_tp(self, tp: int) -> None:
        problems = []
        for what, n in (
            ("num_key_value_heads", self.kv_heads),
            ("intermediate_size", self.ffn),
            ("vocab size", self.vocab),
        ):
            if n % tp:
                problems.append(f"{what} ({n}) is not divisible by tensor parallel size {tp}")
        if problems:
            raise ValueError("; ".join(problems))


# ---------------------------------------------------------------------- fused layouts


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: LlamaShape) -> torch.Tensor:
    """HF q/k/v_proj.weight -> Megatron linear_qkv.weight (full, all TP ranks)."""
    g, d, h = s.kv_heads, s.head_dim, q.shape[-1]
    qg = q.reshape(g, s.q_per_group * d, h)
    kg = k.reshape(g, d, h)
    vg = v.reshape(g, d, h)
    return torch.cat([qg, kg, vg], dim=1).reshape(g * (s.q_per_group + 2) * d, h)


def split_qkv(qkv: torch.Tensor, s: LlamaShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron linear_qkv.weight (full) -> HF q, k, v_proj.weight."""
    g, d, h = s.kv_heads, s.head_dim, qkv.shape[-1]
    grouped = qkv.reshape(g, (s.q_per_group + 2) * d, h)
    qn = s.q_per_group * d
    q = grouped[:, :qn].reshape(g * qn, h)
    k = grouped[:, qn : qn + d].reshape(g * d, h)
    v = grouped[:, qn + d :].reshape(g * d, h)
    return q, k, v


def fuse_qkv_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: LlamaShape):
    """HF q/k/v_proj.bias -> Megatron linear_qkv.bias (grouped like the weight)."""
    cols = [t[:, None] for t in (q, k, v)]
    return fuse_qkv(*cols, s)[:, 0]


def split_qkv_bias(bias: torch.Tensor, s: LlamaShape):
    q, k, v = split_qkv(bias[:, None], s)
    return q[:, 0], k[:, 0], v[:, 0]


def fuse_gate_up(gate: torch.Tensor, up: torch.Tensor, tp: int) -> torch.Tensor:
    """HF gate/up_proj.weight -> gathered Megatron linear_fc1.weight ([gate_r; up_r] per rank)."""
    parts = []
    for gr, ur in zip(gate.chunk(tp, 0), up.chunk(tp, 0), strict=True):
        parts += [gr, ur]
    return torch.cat(parts, 0)


def split_gate_up(fc1: torch.Tensor, tp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gathered Megatron linear_fc1.weight -> HF gate_proj, up_proj weights."""
    gates, ups = [], []
    for shard in fc1.chunk(tp, 0):
        g, u = shard.chunk(2, 0)
        gates.append(g)
        ups.append(u)
    return torch.cat(gates, 0), torch.cat(ups, 0)


# ---------------------------------------------------------------------- names

# Megatron suffix -> (TP split dim or None, kind). Layer-local names start "decoder.layers.i.".
LAYER_PARAMS: dict[str, tuple[int | None, str]] = {
    "input_layernorm.weight": (None, "input_norm"),
    "self_attention.linear_qkv.layer_norm_weight": (None, "input_norm"),
    "self_attention.linear_qkv.weight": (0, "qkv"),
    "self_attention.linear_qkv.bias": (0, "qkv_bias"),
    "self_attention.q_layernorm.weight": (None, "q_norm"),
    "self_attention.k_layernorm.weight": (None, "k_norm"),
    "self_attention.linear_proj.weight": (1, "o_proj"),
    "pre_mlp_layernorm.weight": (None, "post_norm"),
    "mlp.linear_fc1.layer_norm_weight": (None, "post_norm"),
    "mlp.linear_fc1.weight": (0, "gate_up"),
    "mlp.linear_fc2.weight": (1, "down_proj"),
}
GLOBAL_PARAMS: dict[str, tuple[int | None, str]] = {
    "embedding.word_embeddings.weight": (0, "embed"),
    "decoder.final_layernorm.weight": (None, "final_norm"),
    "output_layer.weight": (0, "lm_head"),
}
HF_SIMPLE = {
    "input_norm": "input_layernorm.weight",
    "o_proj": "self_attn.o_proj.weight",
    "post_norm": "post_attention_layernorm.weight",
    "down_proj": "mlp.down_proj.weight",
    "q_norm": "self_attn.q_norm.weight",
    "k_norm": "self_attn.k_norm.weight",
}
HF_GLOBAL = {
    "embed": "model.embed_tokens.weight",
    "final_norm": "model.norm.weight",
    "lm_head": "lm_head.weight",
}
_LAYER_RE = re.compile(r"^(?:module\.)*decoder\.layers\.(\d+)\.(.+)$")
# HF decoder layers' parameter order (named_parameters; Llama, Qwen2, Qwen3 agree): what an
# engine that packs its weights holds back to back, so buckets in this order land in them.
HF_LAYER_ORDER = (
    "self_attn.q_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.k_proj.weight",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.weight",
    "self_attn.v_proj.bias",
    "self_attn.o_proj.weight",
    "self_attn.q_norm.weight",
    "self_attn.k_norm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
)
_HF_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_HF_GLOBAL_RANK = {"model.embed_tokens.weight": 0, "model.norm.weight": 2, "lm_head.weight": 3}


def hf_order_key(name: str) -> tuple[int, int, int]:
    m = _HF_LAYER_RE.match(name)
    if m:
        return (1, int(m.group(1)), HF_LAYER_ORDER.index(m.group(2)))
    return (_HF_GLOBAL_RANK[name], 0, 0)


def in_hf_order(pairs: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """HF (name, tensor) pairs sorted as the HF model lists its parameters (Megatron keeps
    the norms first in a layer; HF registers them last)."""
    return sorted(pairs, key=lambda pair: hf_order_key(pair[0]))


def parse_name(name: str) -> tuple[int | None, str, int | None, str]:
    """Megatron name -> (local layer or None, suffix, TP split dim, kind)."""
    name = re.sub(r"^(module\.)+", "", name)
    m = _LAYER_RE.match(name)
    if m:
        suffix = m.group(2)
        if suffix not in LAYER_PARAMS:
            raise KeyError(f"unknown Megatron layer parameter {name!r}")
        dim, kind = LAYER_PARAMS[suffix]
        return int(m.group(1)), suffix, dim, kind
    if name not in GLOBAL_PARAMS:
        raise KeyError(f"unknown Megatron parameter {name!r}")
    dim, kind = GLOBAL_PARAMS[name]
    return None, name, dim, kind


def tp_split_dim(name: str) -> int | None:
    return parse_name(name)[2]


def gather_tp(shards: list[torch.Tensor], dim: int | None) -> torch.Tensor:
    """Concatenate one parameter's TP shards (rank order); replicated ones are taken once."""
    if dim is None or len(shards) == 1:
        return shards[0]
    return torch.cat(shards, dim)


def to_hf(
    name: str, full: torch.Tensor, s: LlamaShape, tp: int, layer_offset: int = 0
) -> list[tuple[str, torch.Tensor]]:
    """One gathered (all TP ranks) Megatron parameter -> its HF names and tensors."""
    layer, _suffix, _dim, kind = parse_name(name)
    if layer is None:
        out = [(HF_GLOBAL[kind], full)]
        if kind == "embed" and s.tie_embeddings:
            pass  # HF ties lm_head to embed_tokens itself; one tensor is sent
        return out
    prefix = f"model.layers.{layer + layer_offset}."
    if kind in ("qkv", "qkv_bias"):
        what = "weight" if kind == "qkv" else "bias"
        q, k, v = split_qkv(full, s) if kind == "qkv" else split_qkv_bias(full, s)
        return [
            (prefix + f"self_attn.q_proj.{what}", q),
            (prefix + f"self_attn.k_proj.{what}", k),
            (prefix + f"self_attn.v_proj.{what}", v),
        ]
    if kind == "gate_up":
        gate, up = split_gate_up(full, tp)
        return [(prefix + "mlp.gate_proj.weight", gate), (prefix + "mlp.up_proj.weight", up)]
    return [(prefix + HF_SIMPLE[kind], full)]


def megatron_to_hf(
    shards_by_rank: list[Mapping[str, torch.Tensor]], s: LlamaShape, layer_offset: int = 0
) -> Iterator[tuple[str, torch.Tensor]]:
    """All TP ranks' named parameters of one pipeline stage -> HF (name, tensor), in HF
    order."""
    tp = len(shards_by_rank)
    out = []
    for name in shards_by_rank[0]:
        dim = tp_split_dim(name)
        full = gather_tp([r[name] for r in shards_by_rank], dim)
        out += to_hf(name, full, s, tp, layer_offset)
    yield from in_hf_order(out)


def stage_layers(s: LlamaShape, pp: int, stage: int) -> range:
    """The HF layer indices pipeline stage `stage` of `pp` holds (Megatron splits evenly)."""
    if s.num_layers % pp:
        raise ValueError(
            f"{s.num_layers} layers cannot be split evenly into {pp} pipeline stages: choose "
            "trainer.parallelism.pipeline dividing the model's num_hidden_layers"
        )
    if pp > 1 and s.tie_embeddings:
        raise ValueError(
            "tied word embeddings with trainer.parallelism.pipeline > 1 are not supported "
            "(the embedding and the lm_head would sit on different stages)"
        )
    n = s.num_layers // pp
    return range(stage * n, (stage + 1) * n)


def hf_to_megatron(
    hf: Mapping[str, torch.Tensor],
    s: LlamaShape,
    tp: int = 1,
    layers: range | None = None,
    first_stage: bool = True,
    last_stage: bool = True,
    fused_norms: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """HF state dict -> one Megatron state dict per TP rank (for the stage holding `layers`,
    numbered locally from 0). `fused_norms`: the Transformer Engine spec's names."""
    s.check_tp(tp)
    layers = layers if layers is not None else range(s.num_layers)
    full: dict[str, torch.Tensor] = {}
    if first_stage:
        full["embedding.word_embeddings.weight"] = hf["model.embed_tokens.weight"]
    in_norm = (
        "self_attention.linear_qkv.layer_norm_weight" if fused_norms else "input_layernorm.weight"
    )
    post_norm = "mlp.linear_fc1.layer_norm_weight" if fused_norms else "pre_mlp_layernorm.weight"
    for local, i in enumerate(layers):
        p, m = f"model.layers.{i}.", f"decoder.layers.{local}."
        full[m + in_norm] = hf[p + "input_layernorm.weight"]
        full[m + "self_attention.linear_qkv.weight"] = fuse_qkv(
            hf[p + "self_attn.q_proj.weight"],
            hf[p + "self_attn.k_proj.weight"],
            hf[p + "self_attn.v_proj.weight"],
            s,
        )
        if s.qkv_bias:
            full[m + "self_attention.linear_qkv.bias"] = fuse_qkv_bias(
                hf[p + "self_attn.q_proj.bias"],
                hf[p + "self_attn.k_proj.bias"],
                hf[p + "self_attn.v_proj.bias"],
                s,
            )
        if s.qk_norm:
            full[m + "self_attention.q_layernorm.weight"] = hf[p + "self_attn.q_norm.weight"]
            full[m + "self_attention.k_layernorm.weight"] = hf[p + "self_attn.k_norm.weight"]
        full[m + "self_attention.linear_proj.weight"] = hf[p + "self_attn.o_proj.weight"]
        full[m + post_norm] = hf[p + "post_attention_layernorm.weight"]
        full[m + "mlp.linear_fc1.weight"] = fuse_gate_up(
            hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"], tp
        )
        full[m + "mlp.linear_fc2.weight"] = hf[p + "mlp.down_proj.weight"]
    if last_stage:
        full["decoder.final_layernorm.weight"] = hf["model.norm.weight"]
        if not s.tie_embeddings:
            full["output_layer.weight"] = hf["lm_head.weight"]
    ranks: list[dict[str, torch.Tensor]] = [{} for _ in range(tp)]
    for name, t in full.items():
        dim = tp_split_dim(name)
        pieces = [t] * tp if dim is None else list(t.chunk(tp, dim))
        for r in range(tp):
            ranks[r][name] = pieces[r].contiguous()
    return ranks


def shape_for(hf_config: Any) -> LlamaShape:
    """The layout of a HF config's family; UnsupportedFamily (with the known families) for
    any other."""
    return LlamaShape.from_hf_config(hf_config)
