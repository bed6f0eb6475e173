"""Advantages from rewards: GRPO's group normalisation, REINFORCE++'s global batch baseline
and normalisation, and DAPO's overlong-response reward shaping.

All return one advantage per sample ([B]); the losses broadcast it over the tokens.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r - mean) / (std + eps) within each group; rewards is [groups, group_size].

    std is the population std (unbiased=False): a group with identical rewards gets
    advantage 0 for every sample (no signal), never a division blow-up.
    """
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def grouped_advantages(
    rewards: torch.Tensor, group_index: torch.Tensor, n_groups: int, eps: float = 1e-6
) -> torch.Tensor:
    """Group-normalised advantages per row ([B] rewards, `group_index` [B]); groups may
    differ in size."""
    adv = torch.zeros_like(rewards)
    for g in range(n_groups):
        rows = group_index == g
        adv[rows] = group_advantages(rewards[rows][None, :], eps)[0]
    return adv


def global_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++: the whole batch's mean reward as the baseline, its (population) std as
    the scale, (r - mean_batch) / (std_batch + eps). A batch of equal rewards gets 0."""
    mean = rewards.mean()
    std = rewards.std(unbiased=False)
    return (rewards - mean) / (std + eps)


def overlong_penalty(
    lengths: torch.Tensor, max_new_tokens: int, buffer: int, penalty: float
) -> torch.Tensor:
    """DAPO's soft overlong punishment, added to the reward: 0 up to max_new_tokens - buffer
    tokens, then falling linearly to -penalty at max_new_tokens (and no lower)."""
    start = max_new_tokens - buffer
    excess = (lengths.to(torch.float64) - start).clamp(min=0.0, max=float(buffer))
    return -penalty * excess / buffer
