"""Tiny random-init models of real families, saved as Hugging Face model directories.

Tests and the local examples need real model directories without a hub download: a BPE
tokenizer trained here with the `tokenizers` library (tokenizer.json, the family's chat
template and special tokens), and a random-init Qwen3 or Llama-3 causal LM saved with
`save_pretrained` (safetensors, optionally sharded) with a generation config. The result is
loaded exactly as a user's model directory is (`model.path`).

    python -m rlpost.tiny OUT --family qwen3 --corpus examples/copy-first-letter.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class ChatFormat:
    """A family's special tokens and chat template (the shapes of the real ones)."""

    specials: tuple[str, ...]
    eos: str  # the tokenizer's eos_token
    pad: str
    bos: str | None
    generation_eos: tuple[str, ...]  # generation_config.json eos_token_id
    template: str

    def render(self, messages: list[dict[str, str]], answer: str | None = None) -> str:
        from jinja2 import Template

        text = Template(self.template).render(messages=messages, add_generation_prompt=True)
        if answer is not None:
            text += answer + self.generation_eos[0]
        return text


QWEN3 = ChatFormat(
    specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"),
    eos="<|im_end|>",
    pad="<|endoftext|>",
    bos=None,
    generation_eos=("<|im_end|>", "<|endoftext|>"),
    template=(
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{{ message['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
)
# Llama 3: the tokenizer's eos is <|end_of_text|>; a chat turn ends with <|eot_id|>, which
# only the generation config names (an engine that ignored it would never stop a turn).
LLAMA3 = ChatFormat(
    specials=(
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|finetune_right_pad_id|>",
        "<unk>",
    ),
    eos="<|end_of_text|>",
    pad="<|finetune_right_pad_id|>",
    bos="<|begin_of_text|>",
    generation_eos=("<|eot_id|>", "<|end_of_text|>"),
    template=(
        "<|begin_of_text|>{% for message in messages %}<|start_header_id|>"
        "{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
        "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant"
        "<|end_header_id|>\n\n{% endif %}"
    ),
)
FORMATS = {"qwen3": QWEN3, "llama": LLAMA3}

# Small enough for 2 CPU cores; GQA (2 KV heads for 4 query heads) as in the real families.
TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 512,  # RoPE: no parameters, room for word problems
    "rms_norm_eps": 1e-6,
}
FAMILY_CONFIG: dict[str, dict[str, Any]] = {
    "qwen3": {"tie_word_embeddings": True, "rope_theta": 1_000_000.0},
    "llama": {"tie_word_embeddings": False, "rope_theta": 500_000.0},
}


def train_tokenizer(out: str | Path, family: str, texts: Iterable[str], vocab_size: int = 64):
    """A BPE tokenizer trained on `texts` (plus the chat template's own text), with the
    family's special tokens and chat template, saved in `out` (tokenizer.json,
    tokenizer_config.json, chat_template.jinja). Characters never seen map to <unk>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    fmt = FORMATS[family]
    sample = fmt.render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])

    # Special tokens are whole tokens when encoding, which splits the text around them: train
    # on the pieces between them, so no merge is spent on them or across them.
    split = re.compile("|".join(re.escape(t) for t in fmt.specials))
    corpus = [piece for t in (*texts, sample) for piece in split.split(t) if piece]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Newlines are tokens of their own (as in the real families' pre-tokenizers): a merge never
    # glues the template's "user\n" to the first word of the message.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
            pre_tokenizers.Metaspace(prepend_scheme="never"),
        ]
    )
    tok.decoder = decoders.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(fmt.specials), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=fmt.eos,
        pad_token=fmt.pad,
        bos_token=fmt.bos,
        unk_token="<unk>",
        chat_template=fmt.template,
        add_bos_token=False,
    )
    fast.save_pretrained(str(out))
    return fast


def save_tiny_model(
    out: str | Path,
    family: str,
    texts: Iterable[str],
    *,
    vocab_size: int = 64,
    seed: int = 0,
    max_shard_size: str | None = None,
    chat_template: bool = True,
    **config: Any,
) -> Path:
    """A HF model directory: a tokenizer trained on `texts` and a random-init model of
    `family` ("qwen3" or "llama") sized to it. `max_shard_size` (e.g. "20KB") writes
    sharded safetensors with an index, as large checkpoints are."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fmt = FORMATS[family]
    tok = train_tokenizer(out, family, texts, vocab_size)
    ids = tok.convert_tokens_to_ids
    fields = {
        **TINY_CONFIG,
        **FAMILY_CONFIG[family],
        **config,
        "vocab_size": len(tok),
        "eos_token_id": ids(fmt.eos),
        "pad_token_id": ids(fmt.pad),
        "bos_token_id": ids(fmt.bos) if fmt.bos else None,
    }
    cfg = AutoConfig.for_model(family, **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).float()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids(t) for t in fmt.generation_eos],
        pad_token_id=ids(fmt.pad),
        bos_token_id=fields["bos_token_id"],
    )
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(out), **kwargs)
    if not chat_template:  # a tokenizer without one (to test the refusal)
        (out / "chat_template.jinja").unlink(missing_ok=True)
        cfg_file = out / "tokenizer_config.json"
        data = json.loads(cfg_file.read_text())
        data.pop("chat_template", None)
        cfg_file.write_text(json.dumps(data, indent=2))
    return out


def corpus_from_jsonl(path: str | Path, family: str, key: str = "prompt") -> list[str]:
    """Chat-formatted prompt + label texts of a JSONL task file (the tokenizer's corpus):
    rows with `messages` (chat) or a `key` prompt string."""
    fmt = FORMATS[family]
    texts = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            messages = row.get("messages") or [{"role": "user", "content": row[key]}]
            texts.append(fmt.render(messages, str(row.get("label", ""))))
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--family", choices=sorted(FORMATS), default="qwen3")
    parser.add_argument("--corpus", required=True, help="JSONL task file (prompt, label)")
    parser.add_argument("--vocab-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    texts = corpus_from_jsonl(args.corpus, args.family)
    out = save_tiny_model(args.out, args.family, texts, vocab_size=args.vocab_size, seed=args.seed)
    print(f"wrote {out}: {args.family}, vocab from {len(texts)} texts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
