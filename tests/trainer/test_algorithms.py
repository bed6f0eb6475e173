"""Each algorithm's loss and its gradient w.r.t. the logprobs against a hand-written reference
(plain Python loops over a fixed small batch, gradients derived by hand, float64, 1e-6):
GRPO, GSPO, DAPO, REINFORCE++ under every loss aggregation, with and without the KL term and
TIS; clip-high, zero-advantage and length-1 edge cases; the advantages; global shares."""

from __future__ import annotations

import math

import pytest
import torch
from rlpost_trainer.algorithms import MODULES, batch_advantages, loss_config, policy_loss
from rlpost_trainer.algorithms.advantages import global_advantages, overlong_penalty
from rlpost_trainer.algorithms.core import LossConfig
from rlpost_trainer.batch import Batch, collate

from rlpost.api import AlgorithmSpec, LossAggregation, RLPostTrainJobSpec

TOL = 1e-6
AGGS = [a.value for a in LossAggregation]
NAMES = ["grpo", "gspo", "dapo", "reinforce_pp"]

# A fixed batch, 5 rows x 5 positions. d = logp - old per position; None = not trained
# (prompt, tool output, padding: the logprob there is wild and must not matter).
D = [
    [None, 0.1, 0.223, 0.4, None],  # r = 1.11, 1.25 (clip-high edge), 1.49; A > 0
    [None, None, -0.3, None, None],  # length 1: r = 0.74 < 0.8, A < 0 (clipped)
    [0.3, -0.05, None, -0.4, None],  # a masked hole; r = 1.35 (A < 0: unclipped), 0.67
    [None, None, None, None, None],  # no trained token
    [None, None, None, -0.5, 0.1],  # r = 0.61 (A > 0: unclipped), 1.11
]
ADV = [1.0, -0.5, -1.2, 0.7, 0.4]
OLD = [[-1.0 - 0.1 * (i + t) for t in range(5)] for i in range(5)]
# Engine logprobs (for TIS): differ from OLD by a per-token offset, some above log(cap).
ROLLOUT_OFFSET = [[0.05 * ((i * 5 + t) % 7) - 0.15 for t in range(5)] for i in range(5)]
REF_OFFSET = [[0.07 * ((i * 3 + t) % 5) - 0.1 for t in range(5)] for i in range(5)]
WILD = 3.0


def tensors():
    mask = [[0.0 if d is None else 1.0 for d in row] for row in D]
    logp = [
        [OLD[i][t] + (WILD if d is None else d) for t, d in enumerate(row)]
        for i, row in enumerate(D)
    ]
    rollout = [[OLD[i][t] - ROLLOUT_OFFSET[i][t] for t in range(5)] for i in range(5)]
    ref = [[logp[i][t] + REF_OFFSET[i][t] for t in range(5)] for i in range(5)]

    def t64(x):
        return torch.tensor(x, dtype=torch.float64)

    return t64(logp), t64(OLD), t64(ADV), t64(mask), t64(ref), t64(rollout)


# ----------------------------------------------------------------------- the reference


def ref_min_grad(r, a, low, high):
    """value of min(r a, clip(r) a) and its derivative w.r.t. r."""
    u = r * a
    c = min(max(r, 1 - low), 1 + high) * a
    inside = 1 - low <= r <= 1 + high
    if inside:
        return u, a
    return (u, a) if u < c else (c, 0.0)


def reference(name, cfg, logp, old, adv, mask, ref=None, rollout=None):
    """(loss, d loss / d logp) by loops; the gradient derived by hand."""
    rows, cols = len(logp), len(logp[0])
    rollout = old if rollout is None else rollout
    trained = [[t for t in range(cols) if mask[i][t] > 0] for i in range(rows)]
    n_tok = sum(len(ts) for ts in trained)
    n_seq = sum(1 for ts in trained if ts)
    # w_t: TIS weight (no gradient).
    w = [[1.0] * cols for _ in range(rows)]
    if cfg.tis_cap is not None:
        for i in range(rows):
            for t in trained[i]:
                w[i][t] = min(math.exp(old[i][t] - rollout[i][t]), cfg.tis_cap)
    # Per-token values v and their derivative wrt each logp of the same row: dv[i][t][u].
    v = [[0.0] * cols for _ in range(rows)]
    dv = [[[0.0] * cols for _ in range(cols)] for _ in range(rows)]
    for i in range(rows):
        if name == "gspo":
            if not trained[i]:
                continue
            n = len(trained[i])
            s = math.exp(sum(logp[i][t] - old[i][t] for t in trained[i]) / n)
            m, dm = ref_min_grad(s, adv[i], cfg.clip_low, cfg.clip_high)
            for t in trained[i]:
                v[i][t] = -m * w[i][t]
                for u in trained[i]:
                    dv[i][t][u] = -dm * s / n * w[i][t]
        else:
            for t in trained[i]:
                r = math.exp(logp[i][t] - old[i][t])
                a = adv[i][t] if isinstance(adv[i], list) else adv[i]  # [B, T] (ppo) or [B]
                m, dm = ref_min_grad(r, a, cfg.clip_low, cfg.clip_high)
                v[i][t] = -m * w[i][t]
                dv[i][t][t] = -dm * r * w[i][t]
        if cfg.kl_coef > 0:
            for t in trained[i]:
                x = ref[i][t] - logp[i][t]
                v[i][t] += cfg.kl_coef * (math.exp(x) - x - 1)
                dv[i][t][t] += cfg.kl_coef * (-math.exp(x) + 1)
    # Aggregation: each token's weight in the batch value.
    agg = LossAggregation(cfg.aggregation)
    scale = [[0.0] * cols for _ in range(rows)]
    for i in range(rows):
        for t in trained[i]:
            if agg == LossAggregation.TOKEN_MEAN:
                scale[i][t] = 1.0 / n_tok
            elif agg == LossAggregation.SEQ_MEAN_TOKEN_SUM:
                scale[i][t] = 1.0 / n_seq
            else:
                scale[i][t] = 1.0 / n_seq / len(trained[i])
    loss = sum(scale[i][t] * v[i][t] for i in range(rows) for t in range(cols))
    grad = [
        [sum(scale[i][t] * dv[i][t][u] for t in range(cols)) for u in range(cols)]
        for i in range(rows)
    ]
    return loss, grad


def run(name, cfg, logp, old, adv, mask, ref=None, rollout=None, **kw):
    lp = logp.clone().requires_grad_(True)
    loss, stats = MODULES[name].loss(
        lp, old, adv, mask, cfg, ref_logprobs=ref, rollout_logprobs=rollout, **kw
    )
    loss.backward()
    return loss.item(), lp.grad, stats


def check(name, cfg, logp, old, adv, mask, ref=None, rollout=None):
    got, grad, stats = run(name, cfg, logp, old, adv, mask, ref, rollout)
    lists = [x.tolist() if x is not None else None for x in (logp, old, adv, mask, ref, rollout)]
    want, want_grad = reference(name, cfg, *lists)
    assert got == pytest.approx(want, abs=TOL)
    assert torch.allclose(grad, torch.tensor(want_grad, dtype=torch.float64), atol=TOL, rtol=0)
    return got, grad, stats


# ----------------------------------------------------------------------- the tests


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("name", NAMES)
def test_loss_and_gradient_match_the_reference(name, agg):
    logp, old, adv, mask, _, _ = tensors()
    _, grad, _ = check(name, LossConfig(0.2, 0.2, agg), logp, old, adv, mask)
    assert torch.all(grad[mask == 0] == 0)  # wild untrained positions do nothing
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("name", NAMES)
def test_with_decoupled_clip_kl_and_tis_match_the_reference(name, agg):
    logp, old, adv, mask, ref, rollout = tensors()
    cfg = LossConfig(0.2, 0.28, agg, kl_coef=0.1, tis_cap=1.1)
    _, _, stats = check(name, cfg, logp, old, adv, mask, ref, rollout)
    # Some TIS weights are capped (rollout offsets up to +0.15 > log 1.1), not all.
    assert 0 < stats.tis_clip_fraction < 1 and stats.kl > 0


def test_clip_high_edge_case_token_level():
    """r = 1.25 with A > 0: clipped (no gradient) at clip 0.2, live at DAPO's 0.28."""
    old = torch.zeros(1, 1, dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.float64)
    logp = torch.full((1, 1), math.log(1.25), dtype=torch.float64)
    adv = torch.tensor([2.0], dtype=torch.float64)
    _, g_sym, s_sym = check("grpo", LossConfig(0.2, 0.2), logp, old, adv, mask)
    assert g_sym.item() == 0.0 and s_sym.clip_fraction == 1.0
    cfg = loss_config(AlgorithmSpec(name="dapo"))
    assert (cfg.clip_low, cfg.clip_high, cfg.aggregation) == (0.2, 0.28, "token-mean")
    _, g_dapo, s_dapo = check("dapo", cfg, logp, old, adv, mask)
    assert g_dapo.item() == pytest.approx(-2.0 * 1.25, abs=TOL) and s_dapo.clip_fraction == 0.0
    # Past 1.28 DAPO clips too; a low ratio with A < 0 is clipped at 1 - clipLow.
    _, g, _ = check("dapo", cfg, logp + 0.05, old, adv, mask)
    assert g.item() == 0.0
    _, g, _ = check("dapo", cfg, torch.full((1, 1), -0.3, dtype=torch.float64), old, -adv, mask)
    assert g.item() == 0.0


def test_clip_high_edge_case_sequence_level():
    """GSPO clips the sequence's ratio exp(mean log-ratio), not each token's."""
    old = torch.zeros(1, 2, dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.float64)
    # Token ratios 1.65 and 0.90 (one far out), sequence ratio exp(0.2) = 1.22: inside 0.28.
    logp = torch.tensor([[0.5, -0.1]], dtype=torch.float64)
    adv = torch.tensor([1.0], dtype=torch.float64)
    _, g, s = check("gspo", LossConfig(0.2, 0.28), logp, old, adv, mask)
    assert torch.all(g < 0) and s.clip_fraction == 0.0
    _, g, s = check("gspo", LossConfig(0.2, 0.2), logp, old, adv, mask)
    assert torch.all(g == 0) and s.clip_fraction == 1.0


def test_token_level_aggregation_weighs_tokens_not_sequences():
    """token-mean: a 3-token row weighs 3x a 1-token row; seq-mean-token-mean: the same."""
    old = torch.zeros(2, 3, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.float64)
    adv = torch.tensor([1.0, 1.0], dtype=torch.float64)
    logp = torch.zeros(2, 3, dtype=torch.float64)
    _, g, _ = check("dapo", LossConfig(0.2, 0.28, "token-mean"), logp, old, adv, mask)
    assert g[0, 0].item() == pytest.approx(-1 / 4) and g[1, 0].item() == pytest.approx(-1 / 4)
    _, g, _ = check("grpo", LossConfig(0.2, 0.2, "seq-mean-token-mean"), logp, old, adv, mask)
    assert g[0, 0].item() == pytest.approx(-1 / 6) and g[1, 0].item() == pytest.approx(-1 / 2)
    _, g, _ = check("grpo", LossConfig(0.2, 0.2, "seq-mean-token-sum"), logp, old, adv, mask)
    assert g[0, 0].item() == pytest.approx(-1 / 2) and g[1, 0].item() == pytest.approx(-1 / 2)


def test_length_one_responses_gspo_equals_grpo_and_aggregations_agree():
    logp, old, _, _, _, _ = tensors()
    mask = torch.zeros(5, 5, dtype=torch.float64)
    mask[:, 2] = 1.0  # every response one token long
    logp = logp.clone()
    logp[:, 2] = old[:, 2] + torch.tensor([0.1, 0.3, -0.3, 0.0, 0.26], dtype=torch.float64)
    adv = torch.tensor(ADV, dtype=torch.float64)
    results = []
    for name in NAMES:
        for agg in AGGS:
            loss, grad, _ = check(name, LossConfig(0.2, 0.28, agg), logp, old, adv, mask)
            results.append((loss, grad))
    for loss, grad in results[1:]:
        assert loss == pytest.approx(results[0][0], abs=TOL)
        assert torch.allclose(grad, results[0][1], atol=TOL, rtol=0)


def _batch(rewards, lengths):
    groups = []
    for g, (rs, ls) in enumerate(zip(rewards, lengths, strict=True)):
        samples = [
            {
                "sample_id": f"g{g}s{k}",
                "prompt_ids": [1, 2],
                "response_ids": [3] * n,
                "response_logprobs": [-0.5] * n,
                "reward": r,
                "weight_version": 0,
            }
            for k, (r, n) in enumerate(zip(rs, ls, strict=True))
        ]
        groups.append({"group_id": f"g{g}", "weight_version": 0, "samples": samples})
    return collate(Batch.model_validate({"step": 0, "groups": groups}), pad_id=0)


def _spec(**alg):
    return RLPostTrainJobSpec.model_validate(
        {
            "model": {"config": {}, "tokenizer": "char:ab"},
            "data": {"prompts": "x"},
            "rollout": {"maxNewTokens": 8},
            "algorithm": alg,
        }
    )


@pytest.mark.parametrize("name", NAMES)
def test_all_equal_rewards_give_zero_advantage_loss_and_gradient(name):
    tb = _batch([[0.5, 0.5], [0.5, 0.5, 0.5]], [[1, 3], [2, 2, 1]])
    adv = batch_advantages(tb, _spec(name=name))
    assert torch.equal(adv, torch.zeros(5))
    # Equal within each group only: no signal for the group baselines, some for REINFORCE++.
    tb.rewards[:2] = 1.0
    other = batch_advantages(tb, _spec(name=name))
    assert torch.equal(other, torch.zeros(5)) == (name != "reinforce_pp")
    n = tb.loss_mask.shape[1]
    logp = torch.linspace(-2, -0.1, 5 * n, dtype=torch.float64).reshape(5, n)
    mask, old = tb.loss_mask.double(), logp - 0.3
    loss, grad, _ = run(name, loss_config(AlgorithmSpec(name=name)), logp, old, adv.double(), mask)
    assert loss == 0.0 and torch.all(grad == 0)


def test_advantages_group_global_and_overlong_against_loops():
    rewards = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.5]]
    lengths = [[8, 2, 7], [5, 6, 1, 8]]
    tb = _batch(rewards, lengths)
    flat = [r for g in rewards for r in g]

    def normalise(xs, ys):  # (x - mean(ys)) / (population std(ys) + 1e-6)
        m = sum(ys) / len(ys)
        sd = math.sqrt(sum((y - m) ** 2 for y in ys) / len(ys))
        return [(x - m) / (sd + 1e-6) for x in xs]

    group = normalise(rewards[0], rewards[0]) + normalise(rewards[1], rewards[1])
    for name, want in [("grpo", group), ("gspo", group), ("dapo", group)]:
        assert batch_advantages(tb, _spec(name=name)).tolist() == pytest.approx(want, abs=TOL)
    want = normalise(flat, flat)
    assert batch_advantages(tb, _spec(name="reinforce_pp")).tolist() == pytest.approx(want)
    assert global_advantages(torch.tensor(flat)).tolist() == pytest.approx(want, abs=1e-5)
    # Overlong: maxNewTokens 8, buffer 3: lengths 6, 7, 8 lose 1/3, 2/3, 3/3 of 0.6.
    pen = [-0.6 * min(max(n - 5, 0), 3) / 3 for g in lengths for n in g]
    assert overlong_penalty(torch.tensor([5, 6, 7, 8]), 8, 3, 0.6).tolist() == pytest.approx(
        [0.0, -0.2, -0.4, -0.6]
    )
    shaped = [r + p for r, p in zip(flat, pen, strict=True)]
    want = normalise(shaped[:3], shaped[:3]) + normalise(shaped[3:], shaped[3:])
    got = batch_advantages(tb, _spec(name="dapo", overlongBuffer=3, overlongPenalty=0.6))
    assert got.tolist() == pytest.approx(want, abs=TOL)
    flipped = batch_advantages(tb, _spec(name="reinforce_pp", advantageSign=-1))
    assert flipped.tolist() == pytest.approx([-x for x in normalise(flat, flat)])


@pytest.mark.parametrize("name", NAMES)
def test_policy_loss_with_tis_weights_against_the_trainer_policy(name):
    """TIS on: the ratio is taken against the trainer's own logprobs (ratio 1), each token
    weighted by min(pi_trainer / pi_rollout, cap); the mismatch metric is the mean
    |logp - rollout| over trained tokens."""
    logp, _, adv, mask, _, rollout = tensors()
    alg = AlgorithmSpec(name=name, tisCap=1.1)
    lp = logp.clone().requires_grad_(True)
    loss, stats = policy_loss(alg, lp, rollout, adv, mask)
    loss.backward()
    lists = [x.tolist() for x in (logp, logp, adv, mask)]
    want, want_grad = reference(name, loss_config(alg), *lists, rollout=rollout.tolist())
    assert loss.item() == pytest.approx(want, abs=TOL)
    assert torch.allclose(lp.grad, torch.tensor(want_grad, dtype=torch.float64), atol=TOL)
    pairs = [
        (logp[i, t].item(), rollout[i, t].item())
        for i in range(5)
        for t in range(5)
        if mask[i, t] > 0
    ]
    mismatch = sum(abs(a - b) for a, b in pairs) / len(pairs)
    capped = sum(math.exp(a - b) > 1.1 for a, b in pairs) / len(pairs)
    assert stats.logprob_mismatch == pytest.approx(mismatch, abs=TOL) and mismatch > 0
    assert stats.tis_clip_fraction == pytest.approx(capped) and 0 < capped < 1
    assert stats.ratio_mean == pytest.approx(1.0) and stats.clip_fraction == 0.0


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("name", NAMES)
def test_shares_of_row_splits_add_up_to_the_whole_batch(name, agg):
    logp, old, adv, mask, ref, rollout = tensors()
    cfg = LossConfig(0.2, 0.28, agg, kl_coef=0.1, tis_cap=1.1)
    whole, g_whole, s_whole = run(name, cfg, logp, old, adv, mask, ref, rollout)
    n_seqs, n_tokens = float((mask.sum(-1) > 0).sum()), float(mask.sum())
    total, grads, stats = 0.0, [], []
    for lo, hi in [(0, 2), (2, 5)]:
        part = [x[lo:hi] for x in (logp, old, adv, mask, ref, rollout)]
        loss, g, s = run(name, cfg, *part, n_seqs=n_seqs, n_tokens=n_tokens)
        total += loss
        grads.append(g)
        stats.append(s)
    assert total == pytest.approx(whole, abs=TOL)
    assert torch.allclose(torch.cat(grads), g_whole, atol=TOL, rtol=0)
    for key, value in vars(s_whole).items():
        assert sum(getattr(s, key) for s in stats) == pytest.approx(value, abs=TOL), key


def test_spec_defaults_validation_and_unchanged_old_specs():
    assert loss_config(AlgorithmSpec()) == LossConfig(0.2, 0.2, "seq-mean-token-mean")
    assert loss_config(AlgorithmSpec(name="reinforce_pp")).aggregation == "token-mean"
    custom = AlgorithmSpec(name="gspo", clipLow=3e-4, clipHigh=4e-4, lossAggregation="token-mean")
    assert loss_config(custom) == LossConfig(3e-4, 4e-4, "token-mean")
    assert set(AlgorithmSpec().wire()) == {
        "name", "groupSize", "rolloutBatchSize", "lr", "klCoef", "clip", "overlongPenalty",
        "dynamicSampling", "advantageSign",
    }  # fmt: skip
    for bad in [{"name": "ppo2"}, {"clipLow": 1.0}, {"tisCap": 0.5}, {"overlongBuffer": 0}]:
        with pytest.raises(ValueError):
            AlgorithmSpec.model_validate(bad)
    from rlpost.api import semantic_errors

    assert semantic_errors(_spec(name="dapo", overlongBuffer=4)) == []
    assert "overlongBuffer" in " ".join(semantic_errors(_spec(name="dapo", overlongBuffer=8)))
