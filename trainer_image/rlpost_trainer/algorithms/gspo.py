"""GSPO (Zheng et al. 2025): one importance ratio per sequence,
s_i = exp(mean over its trained tokens of log pi_theta - log pi_old), clipped at sequence
level: the loss of sequence i is -min(s_i A_i, clip(s_i, 1 - clipLow, 1 + clipHigh) A_i),
spread over its tokens and aggregated as the spec says (seq-mean-token-mean, the default, is
the paper's mean over sequences). Advantages are GRPO's (one per sequence)."""

from __future__ import annotations

import torch

from rlpost_trainer.algorithms.core import LossConfig, LossStats, clipped_surrogate, finish

ADVANTAGES = "group"


def loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
    ref_logprobs: torch.Tensor | None = None,
    rollout_logprobs: torch.Tensor | None = None,
    n_seqs: float | None = None,
    n_tokens: float | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """advantages: [B], one per sequence (a sequence-level ratio needs a sequence-level
    advantage). A row without trained tokens has ratio 1 and no loss."""
    if advantages.dim() != 1:
        raise ValueError("gspo needs one advantage per sequence ([B])")
    mask = mask.to(logprobs.dtype)
    log_ratio = ((logprobs - old_logprobs) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    seq_ratio = torch.exp(log_ratio)
    pg_seq, clipped_seq = clipped_surrogate(seq_ratio, advantages, cfg.clip_low, cfg.clip_high)
    shape = logprobs.shape
    return finish(
        pg_seq[:, None].expand(shape), seq_ratio[:, None].expand(shape),
        clipped_seq[:, None].expand(shape), logprobs, old_logprobs, mask, cfg,
        ref_logprobs, rollout_logprobs, n_seqs, n_tokens,
    )  # fmt: skip
