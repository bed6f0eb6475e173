"""DAPO (Yu et al. 2025): GRPO's group-normalised advantages with a decoupled clip range
[1 - clipLow, 1 + clipHigh] (clip-higher: clipHigh defaults to 0.28 > clipLow), token-level
aggregation by default (token-mean: every trained token of the batch weighs the same, so
long responses are not diluted), overlong-response reward shaping
(advantages.overlong_penalty, algorithm.overlongBuffer) and dynamic sampling (the buffer's
algorithm.dynamicSampling)."""

from __future__ import annotations

from rlpost_trainer.algorithms.core import token_level_loss

ADVANTAGES = "group"
loss = token_level_loss
