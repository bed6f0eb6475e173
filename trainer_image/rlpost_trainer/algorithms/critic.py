"""PPO's critic pieces as pure tensor functions: per-token outcome rewards, generalized
advantage estimation (GAE) and the clipped value loss.

Used by `ppo` (ppo.py; the torch backend trains the value model: value_model.py,
docs/DESIGN.md, "Algorithms").

Shapes as in core.py: [B, T] response-aligned, `mask` 1 on trained (policy) tokens. GAE runs
over each row's trained tokens in order: untrained positions (tool output inside a
multi-turn response, padding) are skipped, not treated as steps.
"""

from __future__ import annotations

import torch

from rlpost.api import LossAggregation
from rlpost_trainer.algorithms.core import aggregate


def terminal_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] outcome rewards as [B, T] per-token rewards: each on its row's last trained
    token, 0 elsewhere (a row without trained tokens gets none)."""
    mask = mask.to(rewards.dtype)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask > 0, positions, -1).max(-1).values
    out = torch.zeros_like(mask)
    rows = torch.nonzero(last >= 0)[:, 0]
    out[rows, last[rows]] = rewards[rows]
    return out


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) [B, T], no grad. delta_t = r_t + gamma V_next - V_t with
    V_next = 0 after a row's last trained token; A_t = delta_t + gamma lam A_next;
    returns = A + V. Both 0 on untrained positions."""
    with torch.no_grad():
        mask = mask.to(values.dtype)
        adv = torch.zeros_like(values)
        next_value = torch.zeros(values.shape[0], dtype=values.dtype, device=values.device)
        next_adv = torch.zeros_like(next_value)
        for t in reversed(range(values.shape[1])):
            m = mask[:, t]
            delta = rewards[:, t] + gamma * next_value - values[:, t]
            a = delta + gamma * lam * next_adv
            adv[:, t] = a * m
            next_value = torch.where(m > 0, values[:, t], next_value)
            next_adv = torch.where(m > 0, a, next_adv)
        return adv, (adv + values) * mask


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
    aggregation: LossAggregation | str = LossAggregation.TOKEN_MEAN,
    n_seqs: float | None = None,
    n_tokens: float | None = None,
) -> torch.Tensor:
    """0.5 (V - R)^2, or with `clip` PPO's pessimistic
    0.5 max((V - R)^2, (old + clamp(V - old, -clip, clip) - R)^2), aggregated."""
    mask = mask.to(values.dtype)
    err = (values - returns) ** 2
    if clip is not None:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        err = torch.maximum(err, (clipped - returns) ** 2)
    return 0.5 * aggregate(err, mask, aggregation, n_seqs, n_tokens)
