"""GRPO loss pieces: advantages, clipping, masks, KL, advantage sign, batch alignment."""

from __future__ import annotations

import math

import pytest
import torch
from rlpost_trainer.algorithms import batch_advantages, grpo
from rlpost_trainer.algorithms.advantages import group_advantages
from rlpost_trainer.algorithms.core import LossConfig, k3_kl
from rlpost_trainer.batch import Batch, collate
from rlpost_trainer.torch_backend import TorchBackend

from rlpost.api import ModelSource, RLPostTrainJobSpec
from rlpost.models import build_tokenizer

torch.set_num_threads(1)


def test_group_advantages_normalise_within_each_group():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]])
    adv = group_advantages(rewards, eps=0.0)
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]))
    std = math.sqrt(0.5)  # population std of [3, 1, 2, 2]
    assert torch.allclose(adv[1], torch.tensor([1.0, -1.0, 0.0, 0.0]) / std)
    assert torch.allclose(adv.mean(-1), torch.zeros(2), atol=1e-6)


def test_identical_rewards_give_zero_advantage_not_nan():
    adv = group_advantages(torch.tensor([[1.0, 1.0, 1.0]]))
    assert torch.equal(adv, torch.zeros(1, 3))


def grpo_loss(logp, old, adv, mask, clip, kl_coef=0.0, ref_logprobs=None):
    cfg = LossConfig(clip_low=clip, clip_high=clip, kl_coef=kl_coef)
    return grpo.loss(logp, old, adv, mask, cfg, ref_logprobs=ref_logprobs)


def _grad(logp0, old, adv, mask, clip=0.2, **kw):
    logp = logp0.clone().requires_grad_(True)
    loss, stats = grpo_loss(logp, old, adv, mask, clip=clip, **kw)
    loss.backward()
    return loss, stats, logp.grad


def test_clipping_stops_the_gradient_beyond_the_trust_region():
    old = torch.zeros(1, 1)
    mask = torch.ones(1, 1)
    # ratio e^0.5 = 1.65 > 1.2 with A > 0: clipped, no gradient.
    _, stats, g = _grad(torch.full((1, 1), 0.5), old, torch.tensor([1.0]), mask)
    assert g.abs().item() == 0.0 and stats.clip_fraction == 1.0
    # ratio 1.65 with A < 0: the unclipped (pessimistic) term is active.
    _, _, g = _grad(torch.full((1, 1), 0.5), old, torch.tensor([-1.0]), mask)
    assert g.item() == pytest.approx(math.exp(0.5), rel=1e-5)
    # Inside the region the gradient is -A * ratio.
    loss, stats, g = _grad(torch.full((1, 1), 0.1), old, torch.tensor([2.0]), mask)
    assert g.item() == pytest.approx(-2.0 * math.exp(0.1), rel=1e-5)
    assert loss.item() == pytest.approx(-2.0 * math.exp(0.1), rel=1e-5)
    assert stats.clip_fraction == 0.0


def test_masked_tokens_do_not_contribute():
    old = torch.zeros(2, 4)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 0]], dtype=torch.float32)
    base = torch.zeros(2, 4)
    other = base.clone()
    other[mask == 0] = 3.0  # wild values on prompt/pad positions
    l1, _, g1 = _grad(base, old, adv, mask)
    l2, _, g2 = _grad(other, old, adv, mask)
    assert l1.item() == pytest.approx(l2.item())
    assert torch.all(g2[mask == 0] == 0)
    assert torch.allclose(g1[mask == 1], g2[mask == 1])
    # Per-sequence mean: row 0 has 2 tokens, row 1 has 1; each row weighs the same.
    assert g1[0, 1].item() == pytest.approx(-1.0 / 2 / 2)
    assert g1[1, 2].item() == pytest.approx(1.0 / 1 / 2)


def test_k3_kl_is_nonnegative_zero_at_equality_and_matches_true_kl_in_expectation():
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.4, 0.4, 0.2])
    logp, logq = p.log(), q.log()
    assert torch.all(k3_kl(logp, logq) >= 0)
    assert torch.allclose(k3_kl(logp, logp), torch.zeros(3))
    expected = (p * k3_kl(logp, logq)).sum()  # E_{x~p}[k3] = KL(p || q)
    assert expected.item() == pytest.approx((p * (logp - logq)).sum().item(), rel=1e-5)


def test_kl_term_pulls_towards_the_reference():
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    ref = torch.full((1, 2), -1.0)
    logp = torch.full((1, 2), -0.5)
    no_kl, s0, g0 = _grad(logp, old, torch.tensor([0.0]), mask)
    with_kl, s1, g1 = _grad(logp, old, torch.tensor([0.0]), mask, kl_coef=0.5, ref_logprobs=ref)
    kl = k3_kl(logp, ref).mean().item()
    assert s1.kl == pytest.approx(kl) and kl > 0
    assert with_kl.item() == pytest.approx(no_kl.item() + 0.5 * kl)
    assert torch.all(g0 == 0) and torch.all(g1 > 0)  # descent lowers logp towards ref (-1)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(logp, old, torch.tensor([0.0]), mask, clip=0.2, kl_coef=0.1)


def _batch(prompt_ids, responses, rewards, logprobs):
    samples = [
        {
            "sample_id": f"s{i}",
            "prompt_ids": prompt_ids,
            "response_ids": r,
            "response_logprobs": lp,
            "reward": rw,
            "weight_version": 0,
        }
        for i, (r, rw, lp) in enumerate(zip(responses, rewards, logprobs, strict=True))
    ]
    return Batch.model_validate(
        {"step": 0, "groups": [{"group_id": "g", "weight_version": 0, "samples": samples}]}
    )


def test_collate_aligns_response_tokens_logprobs_and_mask():
    b = _batch([1, 5, 6], [[7, 8], [9]], [1.0, 0.0], [[-0.1, -0.2], [-0.3]])
    tb = collate(b, pad_id=0)
    assert tb.input_ids.tolist() == [[1, 5, 6, 7, 8], [1, 5, 6, 9, 0]]
    # targets[t] = input_ids[t+1]; response token 7 is predicted at position 2.
    assert tb.loss_mask.tolist() == [[0, 0, 1, 1], [0, 0, 1, 0]]
    assert tb.targets[0, 2].item() == 7 and tb.targets[1, 2].item() == 9
    assert tb.old_logprobs[0].tolist() == pytest.approx([0, 0, -0.1, -0.2])
    assert batch_advantages(tb).tolist() == pytest.approx([1.0, -1.0], abs=1e-5)
    with pytest.raises(ValueError, match="logprobs"):
        _batch([1], [[7, 8]], [1.0], [[-0.1]])


def _backend(lr=1e-2):
    spec = RLPostTrainJobSpec.model_validate(
        {
            "model": {"config": {}, "tokenizer": "char:ab", "dtype": "float32"},
            "data": {"prompts": "x"},
            "algorithm": {"lr": lr},
        }
    )
    tok = build_tokenizer(ModelSource(tokenizer="char:ab"))
    be = TorchBackend()
    be.setup(spec, tok.vocab_size)
    return be


def test_a_training_step_moves_probability_towards_the_rewarded_answer_and_the_sign_flips_it():
    prompt = [1, 3]  # <bos> a
    good, bad = 3, 4  # answer "a" (rewarded) vs "b"
    for sign in (1, -1):
        be = _backend()
        b = _batch(prompt, [[good], [bad]], [1.0, 0.0], [[0.0], [0.0]])
        tb = collate(b, 0)
        before = be.compute_logprobs(tb)[:, 1]
        tb.old_logprobs[:, 1] = before  # on-policy: old = current
        for _ in range(3):
            be.train_step(tb, batch_advantages(tb) * sign)
        after = be.compute_logprobs(tb)[:, 1]
        delta_good, delta_bad = (after - before).tolist()
        if sign == 1:
            assert delta_good > 0.05 and delta_bad < 0
        else:
            assert delta_good < -0.05 and delta_bad > 0


def test_backend_satisfies_the_protocol_and_state_round_trips():
    from rlpost_trainer.backend import TrainerBackend

    be = _backend()
    assert isinstance(be, TrainerBackend)
    names = [n for n, _ in be.named_hf_weights()]
    assert "model.layers.0.self_attn.q_proj.weight" in names and "lm_head.weight" in names
    state = be.state_dict()
    other = _backend()
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(1.0)
    other.load_state_dict(state)
    for (_, a), (_, b) in zip(be.named_hf_weights(), other.named_hf_weights(), strict=True):
        assert torch.equal(a, b)
