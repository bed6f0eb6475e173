"""GRPO: group-normalised advantages (r - mean_group) / std_group, PPO's clipped surrogate
on each token's ratio pi_theta / pi_old with a symmetric clip; by default each sequence's
token mean, then the mean over sequences (seq-mean-token-mean)."""

from __future__ import annotations

from rlpost_trainer.algorithms.core import token_level_loss

ADVANTAGES = "group"
loss = token_level_loss
