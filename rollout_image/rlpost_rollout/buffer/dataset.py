"""Prompt source: a JSONL file (`data.prompts`) or the rows of a data-source function
(`data.source`), both through the same checks. Every row is accepted or rejected with a
reason naming where it came from (file:line, or path[i] for a function's i-th row).

A rejected row is logged, counted (rlpost_dataset_rows_rejected_total) and listed in /stats;
it is never silently dropped. A file where every row is bad is an error at start.
Prompt `i` of the run is row `order(i // n)[i % n]`: each epoch is a fresh permutation seeded
by (seed, epoch), so a cursor value names the same prompt on every restart.

A row's prompt is a string (`data.promptKey`, tokenized as is, with the tokenizer's BOS) or
chat messages (`data.messagesKey`: a list of {"role", "content"}); messages, and plain prompts
when `data.applyChatTemplate` is set (one user message), go through the tokenizer's chat
template here, the one place it is applied: the engines get token ids.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("rlpost_rollout.buffer.dataset")


class DatasetError(ValueError):
    pass


@dataclass(frozen=True)
class Row:
    where: str  # "file:line"
    prompt: str
    label: Any
    prompt_ids: tuple[int, ...]


@dataclass(frozen=True)
class Rejected:
    where: str
    reason: str


class PromptSource:
    def __init__(self, rows: list[Row], rejected: list[Rejected], seed: int = 0):
        self.rows = rows
        self.rejected = rejected
        self.seed = seed
        self._orders: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, index: int) -> Row:
        epoch, pos = divmod(index, len(self.rows))
        order = self._orders.get(epoch)
        if order is None:
            order = list(range(len(self.rows)))
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
            self._orders = {epoch: order}  # one epoch at a time is all the driver needs
        return self.rows[order[pos]]


def load_jsonl(
    path: str | Path,
    prompt_key: str,
    label_key: str,
    tokenizer,
    max_prompt_tokens: int,
    seed=0,
    messages_key: str | None = None,
    apply_chat_template: bool = False,
    field: str = "data.prompts",
) -> PromptSource:
    """`field` names the file in errors (data.prompts, eval.prompts)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{field} {str(path)!r} does not exist")

    def items() -> Iterator[tuple[str, Any, str | None]]:
        with path.open(encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue  # blank lines are layout, not rows
                try:
                    yield f"{path}:{lineno}", json.loads(line), None
                except json.JSONDecodeError as exc:
                    yield (
                        f"{path}:{lineno}",
                        None,
                        f"not valid JSON ({exc.msg} at column {exc.colno})",
                    )

    return build_source(
        items(),
        f"{field} {str(path)!r}",
        prompt_key,
        label_key,
        tokenizer,
        max_prompt_tokens,
        seed,
        messages_key,
        apply_chat_template,
    )


def load_function_rows(
    fn: Callable[..., Any],
    path: str,
    data: dict[str, Any],
    seed: int,
    tokenizer,
    max_prompt_tokens: int,
) -> PromptSource:
    """`data.source`: fn(data, seed) is called once, here; its rows (dicts, as a JSONL row
    would be) go through the same checks, chat template and rejection as the file's."""
    where = f"data.source {path!r}"
    try:
        rows = fn(data, seed)
        iterator = iter(rows)
    except TypeError as exc:
        raise DatasetError(f"{where} returned {type(rows).__name__}, not an iterable") from exc
    except Exception as exc:
        raise DatasetError(f"{where} raised {type(exc).__name__}: {exc}") from exc

    def items() -> Iterator[tuple[str, Any, str | None]]:
        i = 0
        while True:
            try:
                obj = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                raise DatasetError(
                    f"{where} raised {type(exc).__name__} at row {i}: {exc}"
                ) from exc
            yield f"{path}[{i}]", obj, None
            i += 1

    return build_source(
        items(),
        where,
        data.get("promptKey", "prompt"),
        data.get("labelKey", "label"),
        tokenizer,
        max_prompt_tokens,
        seed,
        data.get("messagesKey"),
        bool(data.get("applyChatTemplate", False)),
    )


def build_source(
    items: Iterable[tuple[str, Any, str | None]],
    what: str,
    prompt_key: str,
    label_key: str,
    tokenizer,
    max_prompt_tokens: int,
    seed=0,
    messages_key: str | None = None,
    apply_chat_template: bool = False,
) -> PromptSource:
    """(where, row, why it is unreadable) -> the accepted rows, every other one rejected with
    its reason; `what` names the input in errors."""
    chat = messages_key is not None or apply_chat_template
    if chat and not tokenizer.has_chat_template:
        from rlpost.models import ModelError

        raise ModelError(
            "the prompts are chat messages (data.messagesKey / data.applyChatTemplate) but the "
            "tokenizer has no chat template: add one to the tokenizer (tokenizer_config.json "
            "chat_template or chat_template.jinja) or give plain-text prompts"
        )
    key = messages_key or prompt_key
    rows: list[Row] = []
    rejected: list[Rejected] = []
    for where, obj, reason in items:
        if reason is None:
            reason = (
                _check_messages(obj, key, label_key)
                if messages_key
                else _check(obj, key, label_key)
            )
        if reason is None:
            try:
                text, ids = prompt_tokens(obj[key], tokenizer, chat)
            except ValueError as exc:
                reason = f"prompt cannot be tokenized: {exc}"
            else:
                if len(ids) >= max_prompt_tokens:
                    reason = (
                        f"prompt has {len(ids)} tokens; the model's context is {max_prompt_tokens}"
                    )
        if reason is not None:
            rejected.append(Rejected(where, reason))
            log.error("dataset row rejected", extra={"where": where, "reason": reason})
            continue
        rows.append(Row(where, text, obj[label_key], tuple(ids)))
    if not rows:
        detail = "; ".join(f"{r.where}: {r.reason}" for r in rejected[:5])
        raise DatasetError(
            f"{what} has no usable rows ({len(rejected)} rejected"
            + (f": {detail}" if detail else "")
            + ")"
        )
    if rejected:
        log.warning(
            "dataset loaded with rejected rows",
            extra={"rows": len(rows), "rejected": len(rejected), "source": what},
        )
    return PromptSource(rows, rejected, seed)


def prompt_tokens(prompt: Any, tokenizer, chat: bool) -> tuple[str, list[int]]:
    """The prompt's text as the model sees it and its token ids. Chat: the template's text
    (which writes its own BOS, so none is added)."""
    if not chat:
        return prompt, tokenizer.encode(prompt)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    text = tokenizer.render_chat(messages)
    return text, tokenizer.encode(text, add_bos=False)


def _check_messages(obj: Any, key: str, label_key: str) -> str | None:
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    if key not in obj:
        return f"missing messages key {key!r} (keys: {sorted(obj)[:8]})"
    msgs = obj[key]
    if not isinstance(msgs, list) or not msgs:
        return f"{key!r} must be a non-empty list of chat messages"
    for i, m in enumerate(msgs):
        if not (
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
        ):
            return f"{key!r}[{i}] must be an object with string 'role' and 'content'"
    if label_key not in obj:
        return f"missing label key {label_key!r}"
    return None


def _check(obj: Any, prompt_key: str, label_key: str) -> str | None:
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    if prompt_key not in obj:
        return f"missing prompt key {prompt_key!r} (keys: {sorted(obj)[:8]})"
    if not isinstance(obj[prompt_key], str) or not obj[prompt_key]:
        return f"{prompt_key!r} must be a non-empty string"
    if label_key not in obj:
        return f"missing label key {label_key!r}"
    return None
