"""Tiny random-init Qwen3 and Llama-3 model directories, made once per test session with
`save_pretrained` and a BPE tokenizer trained here (rlpost.tiny): the tests load them exactly
as a user's `model.path` is loaded. HF_HUB_OFFLINE=1: nothing may come from a hub."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[2]
COPY_TASK = ROOT / "examples" / "copy-first-letter.jsonl"
FAMILIES = ("qwen3", "llama")


def corpus(family: str) -> list[str]:
    from rlpost.tiny import corpus_from_jsonl

    # Spaces and digits too, so free text round-trips through the tokenizer.
    return [*corpus_from_jsonl(COPY_TASK, family), "a b c 0 1 2 3 4 5 6 7 8 9 + -"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """family -> model directory; the Qwen3 one is sharded (several safetensors + index)."""
    from rlpost.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    out = {}
    for family in FAMILIES:
        shard = "20KB" if family == "qwen3" else None
        out[family] = save_tiny_model(
            root / family, family, corpus(family), vocab_size=64, max_shard_size=shard
        )
    return out


def job_dict(model_path: Path, prompts: Path, **spec) -> dict:
    base = {
        "model": {"path": str(model_path), "dtype": "float32"},
        "trainer": {"gpusPerPod": 0},
        "data": {"prompts": str(prompts)},
        "rollout": {"engine": "reference", "gpusPerEngine": 0, "maxNewTokens": 4},
        "seed": 0,
    }
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return {"apiVersion": "rlpost.dev/v1alpha1", "kind": "RLPostTrainJob",
            "metadata": {"name": "hf-test"}, "spec": base}  # fmt: skip


def write_prompts(path: Path, rows: list[dict] | None = None) -> Path:
    rows = rows or [{"prompt": "abcd=", "label": "a"}, {"prompt": "hgfe=", "label": "h"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
