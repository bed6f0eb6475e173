"""Models and tokenizers that need nothing from a model hub.

`model.config` in the spec builds a random-init HF Llama (the layout SGLang loads, with HF
parameter names that weight sync uses as its wire names). `model.path` loads a local
directory. The toy tokenizer is character-level and built from the example's alphabet, so
tests and `rlpost run` never download anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rlpost.api import ModelSource

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# A model small enough to learn the toy task on 2 CPU cores in minutes.
TINY_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-5,
}


class CharTokenizer:
    """Character-level tokenizer: ids 0..2 are <pad>, <bos>, <eos>; then one id a character."""

    PAD, BOS, EOS = 0, 1, 2
    SPECIALS = ("<pad>", "<bos>", "<eos>")

    def __init__(self, alphabet: str):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("tokenizer alphabet has repeated characters")
        self.alphabet = alphabet
        self.vocab = list(self.SPECIALS) + list(alphabet)
        self._ids = {c: i + len(self.SPECIALS) for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def eos_token_id(self) -> int:
        return self.EOS

    @property
    def pad_token_id(self) -> int:
        return self.PAD

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        unknown = sorted({c for c in text if c not in self._ids})
        if unknown:
            raise ValueError(f"characters not in the tokenizer alphabet: {unknown!r}")
        return ([self.BOS] if add_bos else []) + [self._ids[c] for c in text]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        out = []
        for i in ids:
            if i < len(self.SPECIALS):
                if not skip_special_tokens:
                    out.append(self.SPECIALS[i])
                continue
            out.append(self.vocab[i])
        return "".join(out)

    def save(self, directory: str | Path) -> None:
        Path(directory, "rlpost_tokenizer.json").write_text(
            json.dumps({"type": "char", "alphabet": self.alphabet})
        )

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        data = json.loads(Path(directory, "rlpost_tokenizer.json").read_text())
        return cls(data["alphabet"])


def build_tokenizer(source: ModelSource) -> CharTokenizer:
    """The tokenizer named by the spec: `tokenizer` is "char:<alphabet>" or a directory."""
    tok = source.tokenizer or (source.path or "")
    if tok.startswith("char:"):
        return CharTokenizer(tok[len("char:") :])
    if tok and Path(tok, "rlpost_tokenizer.json").exists():
        return CharTokenizer.load(tok)
    raise ValueError(
        f"model.tokenizer {tok!r}: use 'char:<alphabet>' or a directory with "
        "rlpost_tokenizer.json (HF tokenizers from a hub are not downloaded)"
    )


def build_model(source: ModelSource, vocab_size: int, seed: int = 0) -> torch.nn.Module:
    """A HF Llama causal LM: random-init from `config`, or loaded from local `path`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = DTYPES[source.dtype]
    if source.config is not None:
        cfg = LlamaConfig(**{**TINY_DEFAULTS, **source.config, "vocab_size": vocab_size})
        cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = 0, 1, 2
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
        return model.to(dtype)
    if source.path is None:
        raise ValueError("model: set model.path or model.config")
    return LlamaForCausalLM.from_pretrained(source.path, torch_dtype=dtype, local_files_only=True)
