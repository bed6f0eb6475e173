"""JSONL prompt source. Every row is accepted or rejected with a reason naming file:line.

A rejected row is logged, counted (rlpost_dataset_rows_rejected_total) and listed in /stats;
it is never silently dropped. A file where every row is bad is an error at start.
Prompt `i` of the run is row `order(i // n)[i % n]`: each epoch is a fresh permutation seeded
by (seed, epoch), so a cursor value names the same prompt on every restart.
"""

from __future__ import annotations

import json
import logging
import random
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
    path: str | Path, prompt_key: str, label_key: str, tokenizer, max_prompt_tokens: int, seed=0
) -> PromptSource:
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"data.prompts {str(path)!r} does not exist")
    rows: list[Row] = []
    rejected: list[Rejected] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            if not line.strip():
                continue  # blank lines are layout, not rows
            reason = None
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                reason = f"not valid JSON ({exc.msg} at column {exc.colno})"
            else:
                reason = _check(obj, prompt_key, label_key)
            if reason is None:
                try:
                    ids = tokenizer.encode(obj[prompt_key])
                except ValueError as exc:
                    reason = f"prompt cannot be tokenized: {exc}"
                else:
                    if len(ids) >= max_prompt_tokens:
                        reason = (
                            f"prompt has {len(ids)} tokens; the model's context is "
                            f"{max_prompt_tokens}"
                        )
            if reason is not None:
                rejected.append(Rejected(where, reason))
                log.error("dataset row rejected", extra={"where": where, "reason": reason})
                continue
            rows.append(Row(where, obj[prompt_key], obj[label_key], tuple(ids)))
    if not rows:
        detail = "; ".join(f"{r.where}: {r.reason}" for r in rejected[:5])
        raise DatasetError(
            f"data.prompts {str(path)!r} has no usable rows ({len(rejected)} rejected"
            + (f": {detail}" if detail else "")
            + ")"
        )
    if rejected:
        log.warning(
            "dataset loaded with rejected rows",
            extra={"rows": len(rows), "rejected": len(rejected), "file": str(path)},
        )
    return PromptSource(rows, rejected, seed)


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
