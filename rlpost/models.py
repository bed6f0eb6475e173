"""Models and tokenizers, from a Hugging Face model directory or from a family's config.

`model.path` is a HF model directory (config.json, safetensors weights, sharded or not, a
tokenizer, optionally generation_config.json): every causal LM transformers supports is
built with its Auto classes from it, in `model.dtype`. `model.config` builds a random-init
model of a family instead (`model_type`, default `llama`, plus config fields; tests, toy
examples). The tokenizer is `model.tokenizer` (a directory, or `char:<alphabet>` for the
toy character tokenizer), else the model directory. Nothing is ever downloaded: every load
is `local_files_only`.

One tokenizer interface for every role (`CharTokenizer`, `HFTokenizer`): `encode`,
`decode`, `vocab_size`, `pad_token_id`, `eos_token_ids` (the tokenizer's EOS plus the
model's generation config `eos_token_id`: what ends a response), `has_chat_template` and
`render_chat(messages)` (the chat template, applied by the buffer only).

`model_problems` says, before anything starts, what about `spec.model` cannot work (missing
directory, an architecture transformers does not know, no chat template when prompts are
chat messages, a dtype the device cannot compute in); `rlpost run` prints them and the
roles exit with them (`rlpost.refuse`), which the operator turns into InvalidSpec.
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
DEFAULT_FAMILY = "llama"


class ModelError(ValueError):
    """spec.model cannot be loaded; the message says what to change."""


class CharTokenizer:
    """Character-level tokenizer: ids 0..2 are <pad>, <bos>, <eos>; then one id a character."""

    PAD, BOS, EOS = 0, 1, 2
    SPECIALS = ("<pad>", "<bos>", "<eos>")
    has_chat_template = False

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
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset({self.EOS})

    @property
    def pad_token_id(self) -> int:
        return self.PAD

    @property
    def probe_token_id(self) -> int:
        """A token any prompt may start with (health checks)."""
        return self.BOS

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

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        raise ModelError("the character tokenizer has no chat template")

    def save(self, directory: str | Path) -> None:
        Path(directory, "rlpost_tokenizer.json").write_text(
            json.dumps({"type": "char", "alphabet": self.alphabet})
        )

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        data = json.loads(Path(directory, "rlpost_tokenizer.json").read_text())
        return cls(data["alphabet"])


class HFTokenizer:
    """A transformers tokenizer behind the interface the roles use."""

    def __init__(self, tok: Any, generation_eos: list[int] | None = None, directory: str = ""):
        self.tok = tok
        self.directory = directory
        eos = set(generation_eos or [])
        if tok.eos_token_id is not None:
            eos.add(int(tok.eos_token_id))
        if not eos:
            raise ModelError(
                f"tokenizer {directory}: no EOS token (neither the tokenizer's eos_token nor "
                "generation_config.json's eos_token_id): a response could never stop"
            )
        self.eos_token_ids = frozenset(eos)
        first = tok.eos_token_id if tok.eos_token_id is not None else min(eos)
        self.eos_token_id = int(first)
        pad = tok.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_id
        bos = tok.bos_token_id
        self.probe_token_id = int(bos) if bos is not None else self.eos_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tok, "chat_template", None))

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Plain text: with the tokenizer's own special tokens (BOS) when `add_bos`."""
        return list(self.tok.encode(text, add_special_tokens=add_bos))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text of a conversation, ending where the assistant's answer starts.
        Encode it with `encode(text, add_bos=False)`: the template writes its own BOS."""
        if not self.has_chat_template:
            raise ModelError(
                f"tokenizer {self.directory or '(model directory)'} has no chat template "
                "(chat_template in tokenizer_config.json or chat_template.jinja), but the "
                "prompts are chat messages (data.messagesKey / data.applyChatTemplate)"
            )
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def save(self, directory: str | Path) -> None:
        self.tok.save_pretrained(str(directory))


# ---------------------------------------------------------------------------- locations


def tokenizer_location(source: ModelSource) -> str:
    return source.tokenizer or (source.path or "")


def is_hf_tokenizer_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "tokenizer.json").exists() or (p / "tokenizer_config.json").exists()


def generation_eos(*directories: str | None) -> list[int]:
    """`eos_token_id` of the first generation_config.json (else config.json) found."""
    for d in directories:
        if not d:
            continue
        for name in ("generation_config.json", "config.json"):
            f = Path(d, name)
            if f.exists():
                value = json.loads(f.read_text()).get("eos_token_id")
                if value is not None:
                    return [int(v) for v in (value if isinstance(value, list) else [value])]
    return []


def build_tokenizer(source: ModelSource) -> CharTokenizer | HFTokenizer:
    """The tokenizer named by the spec: "char:<alphabet>", or a directory (model.tokenizer,
    else model.path) holding a HF tokenizer (tokenizer.json / tokenizer_config.json) or the
    char tokenizer's rlpost_tokenizer.json."""
    tok = tokenizer_location(source)
    if tok.startswith("char:"):
        return CharTokenizer(tok[len("char:") :])
    if tok and Path(tok, "rlpost_tokenizer.json").exists():
        return CharTokenizer.load(tok)
    if tok and is_hf_tokenizer_dir(tok):
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(tok, local_files_only=True)
        except Exception as exc:  # transformers raises many kinds; name the directory
            raise ModelError(f"tokenizer {tok}: cannot be loaded: {exc}") from exc
        return HFTokenizer(hf, generation_eos(source.path, tok), tok)
    raise ModelError(
        f"model.tokenizer {tok!r}: use 'char:<alphabet>' or a directory with a Hugging Face "
        "tokenizer (tokenizer.json / tokenizer_config.json); nothing is downloaded from a hub"
    )


# ---------------------------------------------------------------------------- models


def family_config(source: ModelSource, tokenizer: Any = None, vocab_size: int | None = None):
    """The transformers config of a random-init model: `model.config` (its `model_type`
    names the family, default llama) over small defaults; vocabulary and special ids from
    the tokenizer."""
    from transformers import AutoConfig

    fields = {**TINY_DEFAULTS, **(source.config or {})}
    family = fields.pop("model_type", DEFAULT_FAMILY)
    fields.setdefault("head_dim", fields["hidden_size"] // fields["num_attention_heads"])
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    if isinstance(tokenizer, CharTokenizer) or tokenizer is None:
        ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    else:
        ids = {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.tok.bos_token_id,
            "eos_token_id": sorted(tokenizer.eos_token_ids),
        }
    try:
        return AutoConfig.for_model(family, **{**ids, **fields})
    except ValueError as exc:
        raise ModelError(f"model.config.model_type {family!r}: {exc}") from exc


def build_model(source: ModelSource, vocab_size: int, seed: int = 0) -> torch.nn.Module:
    """A HF causal LM in `source.dtype`: random-init from `config`, or loaded from `path`."""
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[source.dtype]
    if source.config is not None:
        tokenizer = None
        loc = tokenizer_location(source)
        if loc and not loc.startswith("char:") and is_hf_tokenizer_dir(loc):
            tokenizer = build_tokenizer(source)
        cfg = family_config(source, tokenizer, vocab_size)
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(cfg).to(dtype)
    if source.path is None:
        raise ModelError("model: set model.path or model.config")
    problems = directory_problems(source.path)
    if problems:
        raise ModelError("; ".join(problems))
    return AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, local_files_only=True)


def model_config(source: ModelSource, vocab_size: int | None = None):
    """The transformers config the model is (or will be) built from."""
    if source.config is not None:
        loc = tokenizer_location(source)
        tok = None
        if loc and not loc.startswith("char:") and is_hf_tokenizer_dir(loc):
            tok = build_tokenizer(source)
        return family_config(source, tok, vocab_size or (tok.vocab_size if tok else None))
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source.path, local_files_only=True)


# ---------------------------------------------------------------------------- checks


def directory_problems(path: str) -> list[str]:
    """A model directory transformers can build a causal LM from, without running its code."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    where = f"spec.model.path: {path}"
    p = Path(path)
    if not p.is_dir():
        return [f"{where} is not a directory (a Hugging Face model directory is expected)"]
    if not (p / "config.json").exists():
        return [f"{where} has no config.json: not a Hugging Face model directory"]
    raw = json.loads((p / "config.json").read_text())
    model_type = raw.get("model_type")
    try:
        AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        import transformers

        return [
            f"{where}: model_type {model_type!r} (architectures {raw.get('architectures')}) is "
            f"not an architecture transformers {transformers.__version__} knows; rlpost does "
            f"not run a model's own code (trust_remote_code). ({str(exc).splitlines()[0]})"
        ]
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return [
            f"{where}: model_type {model_type!r} has no causal-LM class in transformers "
            "(AutoModelForCausalLM); rlpost trains causal language models"
        ]
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        return [f"{where} has no weights (*.safetensors)"]
    return []


def dtype_problem(dtype: str, device: str) -> str | None:
    """None when `device` ("cpu" / "cuda") can compute a forward pass in `dtype`."""
    t = DTYPES[dtype]
    if device == "cuda":
        if t == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(0)
            return (
                f"spec.model.dtype: bfloat16 is not supported by this GPU ({name}); use "
                "float16 or float32"
            )
        return None
    try:
        a = torch.ones(4, 4, dtype=t)
        torch.nn.functional.linear(a, a).sum().item()
    except (RuntimeError, TypeError) as exc:
        return f"spec.model.dtype: {dtype} is not supported on CPU here ({exc}); use float32"
    return None


def model_problems(
    source: ModelSource, chat_prompts: bool = False, device: str | None = "cpu"
) -> list[str]:
    """What about spec.model cannot work on this machine, each said as what to change.
    `chat_prompts`: the prompts are chat messages (a chat template is needed)."""
    problems: list[str] = []
    if source.path is not None and source.config is None:
        problems += directory_problems(source.path)
    loc = tokenizer_location(source)
    tokenizer = None
    if loc and not problems:
        try:
            tokenizer = build_tokenizer(source)
        except (ModelError, ValueError) as exc:
            problems.append(str(exc))
    if tokenizer is not None and chat_prompts and not tokenizer.has_chat_template:
        problems.append(
            f"spec.model.tokenizer: {loc} has no chat template, but the prompts are chat "
            "messages (data.messagesKey or data.applyChatTemplate): add a chat_template to "
            "the tokenizer or give plain-text prompts (data.promptKey)"
        )
    if source.config is not None:
        try:
            family_config(source, tokenizer if isinstance(tokenizer, HFTokenizer) else None)
        except ModelError as exc:
            problems.append(str(exc))
    if device is not None:
        problem = dtype_problem(source.dtype, device)
        if problem:
            problems.append(problem)
    return problems
