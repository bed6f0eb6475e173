"""The RL algorithms (spec.algorithm.name): one loss module each (grpo, gspo, dapo,
reinforce_pp, ppo), sharing the advantage functions (advantages.py) and the ratio, clip, TIS,
aggregation and statistics plumbing (core.py). critic.py: GAE and the value loss of `ppo`,
whose value model the torch backend trains (value_model.py).

The backends call `policy_loss` per micro-batch; the loop calls `batch_advantages` once per
step (rank 0, whole groups)."""

from __future__ import annotations

import torch

from rlpost.api import AlgorithmSpec, RLPostTrainJobSpec
from rlpost_trainer.algorithms import dapo, grpo, gspo, ppo, reinforce_pp
from rlpost_trainer.algorithms.advantages import (
    global_advantages,
    grouped_advantages,
    overlong_penalty,
)
from rlpost_trainer.algorithms.core import LossConfig, LossStats
from rlpost_trainer.batch import TrainBatch

MODULES = {"grpo": grpo, "gspo": gspo, "dapo": dapo, "reinforce_pp": reinforce_pp, "ppo": ppo}

__all__ = [
    "LossConfig", "LossStats", "batch_advantages", "loss_config", "needs_critic", "policy_loss",
]  # fmt: skip


def needs_critic(alg: AlgorithmSpec) -> bool:
    """The algorithm's advantages come from a value model the backend trains (ppo)."""
    return MODULES[str(alg.name)].ADVANTAGES == "critic"


def loss_config(alg: AlgorithmSpec) -> LossConfig:
    low, high = alg.clip_range()
    return LossConfig(
        clip_low=low,
        clip_high=high,
        aggregation=alg.aggregation(),
        kl_coef=alg.kl_coef,
        tis_cap=alg.tis_cap,
    )


def policy_loss(
    alg: AlgorithmSpec,
    logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None = None,
    n_seqs: float | None = None,
    n_tokens: float | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """The spec's loss of one micro-batch. logprobs: the trainer's, with grad;
    rollout_logprobs: the engine's that sampled.

    Without TIS the ratio is taken against the rollout logprobs (they are pi_old). With TIS
    (alg.tis_cap) it is taken against the trainer's own policy before this step, and the
    TIS weight min(pi_old / pi_rollout, cap) corrects the rest: the trainer takes one
    optimizer step per batch, so pi_old is `logprobs` without grad (no extra forward)."""
    old = logprobs.detach() if alg.tis_cap is not None else rollout_logprobs
    return MODULES[str(alg.name)].loss(
        logprobs,
        old,
        advantages,
        mask,
        loss_config(alg),
        ref_logprobs=ref_logprobs,
        rollout_logprobs=rollout_logprobs,
        n_seqs=n_seqs,
        n_tokens=n_tokens,
    )


def batch_advantages(
    tb: TrainBatch, spec: RLPostTrainJobSpec | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """One advantage per row of the step's batch: rewards (shaped by overlong punishment
    when algorithm.overlongBuffer is set), then the algorithm's normalisation (per group or
    over the batch), times algorithm.advantageSign. No spec: GRPO's (group-normalised).

    A critic algorithm (ppo): the shaped rewards themselves; the backend turns them into
    per-token advantages with its value model (ppo.py) and applies the sign there."""
    alg = spec.algorithm if spec is not None else AlgorithmSpec()
    rewards = tb.rewards
    if alg.overlong_buffer is not None:
        assert spec is not None
        if tb.response_lengths is None:
            raise ValueError("overlong shaping needs the batch's response lengths")
        shaping = overlong_penalty(
            tb.response_lengths, spec.rollout.max_new_tokens, alg.overlong_buffer,
            alg.overlong_penalty,
        )  # fmt: skip
        rewards = rewards + shaping.to(rewards.dtype)
    if needs_critic(alg):
        return rewards
    if MODULES[str(alg.name)].ADVANTAGES == "global":
        adv = global_advantages(rewards, eps)
    else:
        adv = grouped_advantages(rewards, tb.group_index, tb.n_groups, eps)
    return adv * alg.advantage_sign
