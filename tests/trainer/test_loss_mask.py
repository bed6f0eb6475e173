"""A sample's loss_mask (0 = tool output injected by a multi-turn agent, its logprob a 0.0
placeholder) keeps those tokens out of everything the trainer computes: the loss, its
gradient, the KL terms, TIS weights and the train/rollout mismatch (docs/CONTRACTS.md, "Tool
calls")."""

from __future__ import annotations

import pytest
import torch
from rlpost_trainer.algorithms.core import LossConfig, token_level_loss
from rlpost_trainer.batch import Batch, collate


def _stats(mask_injected: bool, injected_lp: float):
    # One sample: policy "?" (lp -0.7), tool output 2 tokens (placeholder), answer (lp -0.2).
    sample = {
        "sample_id": "s",
        "prompt_ids": [1, 5],
        "response_ids": [9, 3, 4, 3],
        "response_logprobs": [-0.7, injected_lp, injected_lp, -0.2],
        "reward": 1.0,
        "weight_version": 0,
        "loss_mask": [1, 0, 0, 1] if mask_injected else None,
    }
    tb = collate(
        Batch.model_validate(
            {"step": 0, "groups": [{"group_id": "g", "weight_version": 0, "samples": [sample]}]}
        ),
        0,
    )
    # the trainer's own logprobs: the engine's plus 0.1 on policy tokens, -3 on injected ones
    trainer_lp = (
        tb.old_logprobs + 0.1 * tb.loss_mask - 3.0 * (tb.old_logprobs == 0)
    ).requires_grad_()
    cfg = LossConfig(kl_coef=0.1, tis_cap=2.0)
    loss, stats = token_level_loss(
        trainer_lp, tb.old_logprobs.detach(), torch.tensor([1.0]), tb.loss_mask, cfg,
        ref_logprobs=tb.old_logprobs - 0.05, rollout_logprobs=tb.old_logprobs,
    )  # fmt: skip
    loss.backward()
    return tb, stats, trainer_lp.grad


def test_masked_tokens_count_nowhere():
    tb, stats, grad = _stats(True, 0.0)
    assert tb.loss_mask.tolist() == [[0, 1, 0, 0, 1]]
    # on the two policy tokens the trainer is 0.1 above the engine: mismatch exactly 0.1
    assert stats.logprob_mismatch == pytest.approx(0.1, abs=1e-6)
    assert grad[0, 2:4].abs().sum() == 0  # no gradient through the tool output
    # the placeholder's value changes nothing
    _, other, _ = _stats(True, -9.0)
    assert other == stats
    # unmasked, the same tokens would count (the test can fail)
    _, unmasked, _ = _stats(False, 0.0)
    assert unmasked.logprob_mismatch > 0.5
