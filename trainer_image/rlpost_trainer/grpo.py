"""GRPO as pure tensor functions (unit-tested without a model).

Shapes: [B, T] over the *response-aligned* positions of a padded batch; `mask` is 1 on
response tokens that are trained and 0 on prompt, tool-output and padding tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r - mean) / (std + eps) within each group; rewards is [groups, group_size].

    std is the population std (unbiased=False): a group with identical rewards gets
    advantage 0 for every sample (no signal), never a division blow-up.
    """
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


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


def token_mean(x: torch.Tensor, mask: torch.Tensor, n_tokens: float | None) -> torch.Tensor:
    """masked_mean, or with `n_tokens` this part's share of the full batch's token mean."""
    return masked_mean(x, mask) if n_tokens is None else (x * mask).sum() / n_tokens


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


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
    kl_coef: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    n_seqs: float | None = None,
    n_tokens: float | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """PPO-clipped policy loss with per-sequence advantages broadcast over tokens.

    advantages: [B] (one per sample) or [B, T]. old_logprobs come from the rollout engine
    (the policy that sampled), so ratio = pi_theta / pi_old is the importance weight.
    `n_seqs` (sequences with trained tokens) and `n_tokens` (trained tokens) of the whole
    batch, when these rows are a part of it: the loss and every statistic are then this
    part's share of the whole batch's value (global normalisation; shares add up).
    """
    mask = mask.to(logprobs.dtype)
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv
    pg = -torch.minimum(unclipped, clipped)
    loss = seq_mean(pg, mask, n_seqs)
    kl_value = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    if kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs")
        kl_value = seq_mean(k3_kl(logprobs, ref_logprobs), mask, n_seqs)
        loss = loss + kl_coef * kl_value
    with torch.no_grad():
        was_clipped = ((ratio - 1.0).abs() > clip).to(mask.dtype)
        stats = LossStats(
            loss=float(loss),
            pg_loss=float(seq_mean(pg, mask, n_seqs)),
            kl=float(kl_value),
            clip_fraction=float(token_mean(was_clipped, mask, n_tokens)),
            ratio_mean=float(token_mean(ratio, mask, n_tokens)),
            kl_rollout=float(seq_mean(k3_kl(logprobs, old_logprobs), mask, n_seqs)),
        )
    return loss, stats
