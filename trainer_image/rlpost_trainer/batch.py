"""The Buffer API's Batch (docs/CONTRACTS.md) as typed models, and its collation to tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Sample(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sample_id: str
    prompt_ids: list[int] = Field(min_length=1)
    response_ids: list[int]
    response: str = ""
    response_logprobs: list[float]
    reward: float
    finish_reason: str | dict[str, Any] | None = None
    weight_version: int
    # Optional per-response-token loss mask (0 = tool output / injected text, not trained).
    loss_mask: list[int] | None = None

    @model_validator(mode="after")
    def _aligned(self) -> Sample:
        if len(self.response_logprobs) != len(self.response_ids):
            raise ValueError(
                f"sample {self.sample_id}: {len(self.response_logprobs)} logprobs for "
                f"{len(self.response_ids)} response tokens"
            )
        if self.loss_mask is not None and len(self.loss_mask) != len(self.response_ids):
            raise ValueError(f"sample {self.sample_id}: loss_mask length != response length")
        return self


class Group(BaseModel):
    model_config = ConfigDict(extra="ignore")

    group_id: str
    prompt_index: int | None = None
    prompt: str = ""
    label: Any = None
    weight_version: int
    samples: list[Sample] = Field(min_length=1)


class Batch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    step: int
    groups: list[Group] = Field(min_length=1)

    @property
    def samples(self) -> list[Sample]:
        return [s for g in self.groups for s in g.samples]


@dataclass
class TrainBatch:
    """Right-padded tensors; position t of `targets`/`mask` predicts input_ids[:, t + 1]."""

    input_ids: torch.Tensor  # [B, L] prompt + response, padded with pad_id
    attention_mask: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B, L-1] = input_ids[:, 1:]
    loss_mask: torch.Tensor  # [B, L-1] 1 on trained response tokens
    old_logprobs: torch.Tensor  # [B, L-1] engine logprobs at response positions, else 0
    rewards: torch.Tensor  # [B]
    group_index: torch.Tensor  # [B] which group each row belongs to
    n_groups: int
    response_tokens: int
    total_tokens: int
    # [B] response length of each row (every generated token, trained or not): the DAPO
    # overlong shaping's input.
    response_lengths: torch.Tensor | None = None


def collate(batch: Batch, pad_id: int) -> TrainBatch:
    samples = batch.samples
    seqs = [s.prompt_ids + s.response_ids for s in samples]
    width = max(len(x) for x in seqs)
    n = len(samples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width - 1), dtype=torch.float32)
    old = torch.zeros((n, width - 1), dtype=torch.float32)
    group_index = []
    for gi, g in enumerate(batch.groups):
        group_index += [gi] * len(g.samples)
    for b, (s, seq) in enumerate(zip(samples, seqs, strict=True)):
        ids[b, : len(seq)] = torch.tensor(seq)
        attn[b, : len(seq)] = 1
        p, r = len(s.prompt_ids), len(s.response_ids)
        if r:
            # Response token j sits at input position p + j, predicted from position p + j - 1.
            lo, hi = p - 1, p - 1 + r
            mask[b, lo:hi] = torch.tensor(s.loss_mask or [1] * r, dtype=torch.float32)
            old[b, lo:hi] = torch.tensor(s.response_logprobs, dtype=torch.float32)
    return TrainBatch(
        input_ids=ids,
        attention_mask=attn,
        targets=ids[:, 1:],
        loss_mask=mask,
        old_logprobs=old,
        rewards=torch.tensor([s.reward for s in samples], dtype=torch.float32),
        group_index=torch.tensor(group_index, dtype=torch.long),
        n_groups=len(batch.groups),
        response_tokens=sum(len(s.response_ids) for s in samples),
        total_tokens=sum(len(x) for x in seqs),
        response_lengths=torch.tensor([len(s.response_ids) for s in samples], dtype=torch.long),
    )
