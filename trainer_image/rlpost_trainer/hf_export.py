"""Hugging Face exports: the policy as a model directory transformers loads as is.

`<checkpoint dir>/hf/step-<k>/`: config.json, generation_config.json, safetensors weights
(`save_pretrained`, in `spec.model.dtype`, HF parameter names), the tokenizer (and its chat
template). The trainer writes one every `checkpoint.hfIntervalSteps` steps and after the last
step (from `named_hf_weights()`, the same tensors weight sync sends); `rlpost export RUN_DIR
--step N OUT` writes one from a training checkpoint (`hf_weights_from_checkpoint`). Written
into a temp dir and renamed, like checkpoints.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from rlpost.api import ModelSource
from rlpost.models import DTYPES, build_tokenizer, model_config

HF_DIR = "hf"


def hf_dir(ckpt_root: Path, step: int) -> Path:
    return ckpt_root / HF_DIR / f"step-{step:08d}"


def save_hf(
    weights: Iterable[tuple[str, torch.Tensor]],
    source: ModelSource,
    out: Path,
    vocab_size: int | None = None,
) -> Path:
    """save_pretrained of a model built from the spec's config with `weights`, plus the
    tokenizer and the source directory's generation config."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    dtype = DTYPES[source.dtype]
    cfg = model_config(source, vocab_size)
    state = {n: t.detach().to("cpu", dtype).contiguous() for n, t in weights}
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    expected = {n for n, _ in skeleton.named_parameters()}
    if set(state) != expected:
        raise ValueError(
            f"HF export: weights do not match {type(skeleton).__name__}: missing "
            f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}"
        )
    out = Path(out)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if source.path and Path(source.path, "generation_config.json").exists():
        skeleton.generation_config = GenerationConfig.from_pretrained(
            source.path, local_files_only=True
        )
    skeleton.save_pretrained(str(tmp), state_dict=state)
    tokenizer = build_tokenizer(source)
    tokenizer.save(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


# ---------------------------------------------------------------------------- checkpoints

_SHARD = re.compile(r"^shard-tp(\d+)-pp(\d+)\.pt$")


def hf_weights_from_checkpoint(
    step_dir: Path, source: ModelSource, backend: str, vocab_size: int | None = None
) -> list[tuple[str, torch.Tensor]]:
    """HF (name, tensor) pairs of the policy saved in a training checkpoint directory
    (`step-<k>/`): the torch backend keeps HF names; Megatron's layout (one state.pt, or one
    shard file per TP/PP rank) is converted with megatron/convert.py."""
    state = torch.load(step_dir / "state.pt", map_location="cpu", weights_only=False)
    if backend == "torch":
        cfg_names = _param_names(source, vocab_size)
        model = state["backend"]["model"]
        return [(n, model[n]) for n in cfg_names]
    from rlpost_trainer.megatron.convert import megatron_to_hf, parse_name, shape_for

    shape = shape_for(model_config(source, vocab_size))
    shards: dict[tuple[int, int], dict[str, Any]] = {}
    for f in step_dir.glob("shard-*.pt"):
        m = _SHARD.match(f.name)
        if m:
            shards[(int(m.group(1)), int(m.group(2)))] = torch.load(
                f, map_location="cpu", weights_only=False
            )["backend"]["model"]
    if not shards:
        shards[(0, 0)] = state["backend"]["model"]
    tp = 1 + max(k[0] for k in shards)
    pp = 1 + max(k[1] for k in shards)
    per_stage = shape.num_layers // pp
    out: list[tuple[str, torch.Tensor]] = []
    for stage in range(pp):
        ranks = []
        for r in range(tp):
            params = {}
            for name, t in shards[(r, stage)].items():
                try:
                    parse_name(name)
                except KeyError:
                    continue  # Megatron's _extra_state and buffers: not parameters
                params[name] = t
            ranks.append(params)
        out += list(megatron_to_hf(ranks, shape, layer_offset=stage * per_stage))
    return out


def _param_names(source: ModelSource, vocab_size: int | None) -> list[str]:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model_config(source, vocab_size))
    return [n for n, _ in skeleton.named_parameters()]
