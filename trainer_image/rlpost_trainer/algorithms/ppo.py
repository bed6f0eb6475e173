"""PPO (Schulman et al. 2017; for LLMs Ouyang et al. 2022) with a value model: the critic
(rlpost_trainer/value_model.py, the policy's architecture with a scalar head) gives one value
per response token; the outcome reward sits on a response's last trained token
(critic.terminal_rewards); per-token advantages and returns by GAE (critic.gae, algorithm.gamma
and gaeLambda); the advantages are whitened over the whole batch's trained tokens; the policy
loss is the clipped surrogate on each token's ratio (core.token_level_loss, with [B, T]
advantages), the critic's the squared error to the returns (critic.value_loss).

The backend computes the advantages (it holds the critic): `batch_advantages` gives it the
(shaped) rewards, one per sample. A batch may be split into parts (micro-batches,
data-parallel ranks): `moments` of each part add up to the whole batch's, which `whiten` uses.
"""

from __future__ import annotations

import torch

from rlpost_trainer.algorithms.core import token_level_loss
from rlpost_trainer.algorithms.critic import gae, terminal_rewards

ADVANTAGES = "critic"
loss = token_level_loss


def advantages_and_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] outcome rewards and the critic's [B, T] values (no grad) to per-token GAE
    (advantages, returns), before whitening; 0 on untrained positions."""
    mask = mask.to(values.dtype)
    per_token = terminal_rewards(rewards.to(values.dtype), mask)
    return gae(per_token, values.detach(), mask, gamma, lam)


def moments(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[count, sum, sum of squares] of x over the trained tokens (float64): add the parts'
    to get the whole batch's."""
    m = mask.to(torch.float64)
    x = x.to(torch.float64) * m
    return torch.stack([m.sum(), x.sum(), (x * x).sum()])


def whiten(
    x: torch.Tensor, mask: torch.Tensor, total: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """(x - mean) / (std + eps) with the batch's mean and population std from `total`
    (moments summed over its parts); 0 on untrained positions. Equal values whiten to 0."""
    n = total[0].clamp(min=1.0)
    mean = total[1] / n
    std = (total[2] / n - mean * mean).clamp(min=0.0).sqrt()
    out = (x.to(torch.float64) - mean) / (std + eps)
    return (out * mask.to(torch.float64)).to(x.dtype)


def explained_variance(total: torch.Tensor) -> float | None:
    """1 - Var(returns - values) / Var(returns) over the trained tokens, from the summed
    [count, sum R, sum R^2, sum (R - V), sum (R - V)^2]; 1 is a perfect critic, <= 0 one no
    better than the mean return. None when the returns do not vary."""
    n = float(total[0].clamp(min=1.0))
    var_r = float(total[2]) / n - (float(total[1]) / n) ** 2
    var_e = float(total[4]) / n - (float(total[3]) / n) ** 2
    return 1.0 - var_e / var_r if var_r > 1e-12 else None
