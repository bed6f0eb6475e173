"""Shared plumbing of the policy losses: masks and aggregation, the clipped surrogate,
truncated importance sampling (TIS), the KL terms and the statistics.

Shapes: [B, T] over the *response-aligned* positions of a padded batch; `mask` is 1 on
response tokens that are trained and 0 on prompt, tool-output and padding tokens.

Global normalisation: `n_seqs` (sequences with trained tokens) and `n_tokens` (trained
tokens) of the whole batch, when these rows are a part of it (micro-batches, data-parallel
ranks). The loss and every statistic are then this part's share of the whole batch's value,
so the shares add up to exactly the full batch's value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlpost.api import LossAggregation


@dataclass(frozen=True)
class LossConfig:
    """What a loss needs from the spec (AlgorithmSpec, defaults resolved: loss_config())."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    aggregation: LossAggregation = LossAggregation.SEQ_MEAN_TOKEN_MEAN
    kl_coef: float = 0.0
    tis_cap: float | None = None


@dataclass
class LossStats:
    loss: float
    pg_loss: float
    kl: float
    clip_fraction: float
    ratio_mean: float
    # k3 KL between the sampling policy (engine logprobs) and the trainer's policy: how far
    # off-policy the batch is (staleness, numerics); shown when there is no reference.
    kl_rollout: float
    # Mean |log pi_trainer - log pi_rollout| per trained token: the train/rollout mismatch.
    logprob_mismatch: float
    # TIS weights min(pi_trainer / pi_rollout, cap): their mean and the share capped
    # (1 and 0 with TIS off).
    tis_weight_mean: float
    tis_clip_fraction: float


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 >= 0."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def per_sequence_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's trained tokens, then over sequences (GRPO's 1/|o_i|)."""
    per_seq = (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    has_tokens = (mask.sum(-1) > 0).to(x.dtype)
    return (per_seq * has_tokens).sum() / has_tokens.sum().clamp(min=1)


def seq_mean(x: torch.Tensor, mask: torch.Tensor, n_seqs: float | None) -> torch.Tensor:
    """per_sequence_mean, or with `n_seqs` the sum of the per-sequence means over `n_seqs`:
    the share of these rows in the mean over a larger batch (micro-batches, data-parallel
    ranks), so the shares add up to exactly the full batch's value."""
    if n_seqs is None:
        return per_sequence_mean(x, mask)
    return ((x * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / n_seqs


def seq_sum_mean(x: torch.Tensor, mask: torch.Tensor, n_seqs: float | None) -> torch.Tensor:
    """Sum over each sequence's trained tokens, mean over the sequences with trained tokens
    (or this part's share of it with `n_seqs`)."""
    if n_seqs is None:
        n_seqs = (mask.sum(-1) > 0).sum().clamp(min=1)
    return (x * mask).sum() / n_seqs


def token_mean(x: torch.Tensor, mask: torch.Tensor, n_tokens: float | None) -> torch.Tensor:
    """masked_mean, or with `n_tokens` this part's share of the full batch's token mean."""
    return masked_mean(x, mask) if n_tokens is None else (x * mask).sum() / n_tokens


def aggregate(
    x: torch.Tensor,
    mask: torch.Tensor,
    mode: LossAggregation | str,
    n_seqs: float | None = None,
    n_tokens: float | None = None,
) -> torch.Tensor:
    """Per-token values [B, T] to the batch's value under the spec's loss aggregation."""
    mode = LossAggregation(mode)
    if mode == LossAggregation.TOKEN_MEAN:
        return token_mean(x, mask, n_tokens)
    if mode == LossAggregation.SEQ_MEAN_TOKEN_SUM:
        return seq_sum_mean(x, mask, n_seqs)
    return seq_mean(x, mask, n_seqs)


def per_token(advantages: torch.Tensor) -> torch.Tensor:
    """[B] (one per sample, broadcast over tokens) or [B, T] advantages as [B, 1|T]."""
    return advantages[:, None] if advantages.dim() == 1 else advantages


def clipped_surrogate(
    ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's pessimistic objective as a loss, -min(r A, clip(r, 1 - low, 1 + high) A), and
    where the ratio is outside [1 - low, 1 + high]."""
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    pg = -torch.minimum(unclipped, clipped)
    was_clipped = (ratio < 1.0 - clip_low) | (ratio > 1.0 + clip_high)
    return pg, was_clipped


def tis_weights(
    old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor, cap: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance weights min(pi_old / pi_rollout, cap) (no gradient) and where
    the cap was hit. pi_old is the trainer's policy the step starts from, pi_rollout the
    engine's that sampled: the correction for what the two disagree on."""
    with torch.no_grad():
        raw = torch.exp((old_logprobs - rollout_logprobs) * mask)
        return raw.clamp(max=cap), raw > cap


def finish(
    pg: torch.Tensor,
    ratio: torch.Tensor,
    was_clipped: torch.Tensor,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
    ref_logprobs: torch.Tensor | None,
    rollout_logprobs: torch.Tensor | None,
    n_seqs: float | None,
    n_tokens: float | None,
) -> tuple[torch.Tensor, LossStats]:
    """The loss from per-token policy-gradient terms `pg` [B, T]: TIS weights (cfg.tis_cap),
    aggregation, the k3 KL to the reference (cfg.kl_coef); and its statistics.

    rollout_logprobs: the engine's sampling logprobs; None means old_logprobs are those."""
    rollout = old_logprobs if rollout_logprobs is None else rollout_logprobs
    if cfg.tis_cap is not None:
        weights, capped = tis_weights(old_logprobs, rollout, mask, cfg.tis_cap)
        pg = pg * weights
    else:
        weights, capped = torch.ones_like(pg), torch.zeros_like(pg)
    pg_loss = aggregate(pg, mask, cfg.aggregation, n_seqs, n_tokens)
    loss = pg_loss
    kl_value = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    if cfg.kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs")
        ref = torch.where(mask > 0, ref_logprobs, logprobs.detach())
        kl_value = aggregate(k3_kl(logprobs, ref), mask, cfg.aggregation, n_seqs, n_tokens)
        loss = loss + cfg.kl_coef * kl_value
    with torch.no_grad():
        lp = logprobs.detach()
        to_rollout = torch.where(mask > 0, rollout, lp)
        dtype = mask.dtype
        stats = LossStats(
            loss=float(loss),
            pg_loss=float(pg_loss),
            kl=float(kl_value),
            clip_fraction=float(token_mean(was_clipped.to(dtype), mask, n_tokens)),
            ratio_mean=float(token_mean(ratio, mask, n_tokens)),
            kl_rollout=float(seq_mean(k3_kl(lp, to_rollout), mask, n_seqs)),
            logprob_mismatch=float(token_mean((lp - to_rollout).abs(), mask, n_tokens)),
            tis_weight_mean=float(token_mean(weights, mask, n_tokens)),
            tis_clip_fraction=float(token_mean(capped.to(dtype), mask, n_tokens)),
        )
    return loss, stats


def token_level_loss(
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
    """The clipped surrogate on each token's ratio pi_theta / pi_old (GRPO, DAPO,
    REINFORCE++ differ in advantages, clip range and aggregation, not here).

    advantages: [B] (one per sample) or [B, T]; old_logprobs: the policy the ratio is taken
    against (the engine's sampling logprobs, or the trainer's own with TIS on)."""
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp((logprobs - old_logprobs) * mask)
    pg, was_clipped = clipped_surrogate(ratio, per_token(advantages), cfg.clip_low, cfg.clip_high)
    return finish(
        pg, ratio, was_clipped, logprobs, old_logprobs, mask, cfg,
        ref_logprobs, rollout_logprobs, n_seqs, n_tokens,
    )  # fmt: skip
