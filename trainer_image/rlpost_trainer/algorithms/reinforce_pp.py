"""REINFORCE++ (Hu 2025): no critic and no per-group baseline; the advantage is the reward
minus the whole batch's mean, divided by the batch's std (advantages.global_advantages), with
PPO's clipped surrogate per token and token-mean aggregation by default."""

from __future__ import annotations

from rlpost_trainer.algorithms.core import token_level_loss

ADVANTAGES = "global"
loss = token_level_loss
