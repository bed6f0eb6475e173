"""`ppo` (algorithms/ppo.py, value_model.py, the torch backend): its advantages, returns,
whitening and explained variance, and its policy loss and gradient on per-token advantages,
against hand-written float64 references within 1e-6 (length-1 responses, all-equal rewards);
a training step of the backend with its critic; the critic's state through a checkpoint
(a resumed step equals an uninterrupted one); megatron and non-ppo specs refused."""

from __future__ import annotations

import math

import pytest
import torch
from rlpost_trainer import checkpoint
from rlpost_trainer.algorithms import batch_advantages, loss_config, policy_loss, ppo
from rlpost_trainer.batch import Batch, collate
from rlpost_trainer.torch_backend import TorchBackend

from rlpost.api import AlgorithmSpec, ModelSource, RLPostTrainJobSpec, semantic_errors
from rlpost.models import build_tokenizer
from tests.trainer.test_algorithms import reference as policy_reference
from tests.trainer.test_critic import reference_gae

torch.set_num_threads(1)
TOL = 1e-6
MASK = [
    [0, 1, 1, 0, 1],  # a hole (tool output) between trained tokens
    [0, 0, 1, 0, 0],  # length 1
    [0, 0, 0, 0, 0],  # nothing trained
    [1, 1, 1, 1, 1],
    [0, 0, 0, 1, 0],  # length 1
]
VALUES = [[0.1 * (i + 1) - 0.07 * t + 0.03 * (t * i % 3) for t in range(5)] for i in range(5)]
REWARDS = [1.0, -0.5, 2.0, 0.25, 0.0]


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


def reference_targets(rewards, values, mask, gamma, lam, sign=1, eps=1e-6):
    """(whitened signed advantages, returns) by loops: the reward on each row's last trained
    token, GAE (test_critic.reference_gae), then (A - mean) / (population std + eps) over
    every trained token of the batch."""
    per_token = [[0.0] * 5 for _ in rewards]
    for i, r in enumerate(rewards):
        trained = [t for t in range(5) if mask[i][t]]
        if trained:
            per_token[i][trained[-1]] = r
    adv = reference_gae(per_token, values, mask, gamma, lam)
    ret = [[(adv[i][t] + values[i][t]) * mask[i][t] for t in range(5)] for i in range(len(adv))]
    flat = [adv[i][t] for i in range(len(adv)) for t in range(5) if mask[i][t]]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((a - mean) ** 2 for a in flat) / len(flat))
    white = [
        [sign * (adv[i][t] - mean) / (std + eps) if mask[i][t] else 0.0 for t in range(5)]
        for i in range(len(adv))
    ]
    return white, ret


def targets(rewards, values, mask, gamma, lam, sign=1):
    adv, ret = ppo.advantages_and_returns(t64(rewards), t64(values), t64(mask), gamma, lam)
    return ppo.whiten(adv, t64(mask), ppo.moments(adv, t64(mask))) * sign, ret


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (1.0, 1.0), (0.9, 0.8)])
def test_advantages_and_returns_match_the_reference(gamma, lam):
    adv, ret = targets(REWARDS, VALUES, MASK, gamma, lam)
    want_adv, want_ret = reference_targets(REWARDS, VALUES, MASK, gamma, lam)
    assert torch.allclose(adv, t64(want_adv), atol=TOL, rtol=0)
    assert torch.allclose(ret, t64(want_ret), atol=TOL, rtol=0)
    # Length-1 responses: the return is the reward, the raw advantage reward - value.
    assert ret[1, 2].item() == pytest.approx(-0.5) and ret[4, 3].item() == pytest.approx(0.0)
    raw, _ = ppo.advantages_and_returns(t64(REWARDS), t64(VALUES), t64(MASK), gamma, lam)
    assert raw[1, 2].item() == pytest.approx(-0.5 - VALUES[1][2])
    # Moments of row splits add up to the whole batch's (micro-batches, data-parallel ranks).
    parts = ppo.moments(raw[:2], t64(MASK[:2])) + ppo.moments(raw[2:], t64(MASK[2:]))
    assert torch.allclose(parts, ppo.moments(raw, t64(MASK)), atol=1e-12, rtol=0)


def test_all_equal_rewards_and_values_give_zero_advantage_loss_and_gradient():
    values = [[0.5] * 5 for _ in range(5)]
    adv, ret = targets([0.5] * 5, values, MASK, 1.0, 0.95)
    assert torch.equal(adv, torch.zeros(5, 5, dtype=torch.float64))
    assert torch.allclose(ret, t64(MASK) * 0.5, atol=TOL, rtol=0)
    logp = torch.linspace(-2, -0.1, 25, dtype=torch.float64).reshape(5, 5).requires_grad_(True)
    loss, _ = policy_loss(AlgorithmSpec(name="ppo"), logp, logp.detach() - 0.3, adv, t64(MASK))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logp.grad == 0)
    # Equal rewards, values that differ: the critic's errors are the signal.
    adv, _ = targets([0.5] * 5, VALUES, MASK, 1.0, 0.95)
    want, _ = reference_targets([0.5] * 5, VALUES, MASK, 1.0, 0.95)
    assert torch.allclose(adv, t64(want), atol=TOL, rtol=0) and adv.abs().sum() > 0


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("agg", [None, "seq-mean-token-mean"])
def test_policy_loss_and_gradient_on_gae_advantages_match_the_reference(agg, sign):
    alg = AlgorithmSpec(name="ppo", lossAggregation=agg)
    cfg = loss_config(alg)
    assert agg is not None or cfg.aggregation == "token-mean"  # ppo's default
    adv, _ = targets(REWARDS, VALUES, MASK, 1.0, 0.95, sign)
    old = t64([[-1.0 - 0.1 * (i + t) for t in range(5)] for i in range(5)])
    # Ratios on both sides of the clip range, wild values on untrained positions.
    d = t64([[0.07 * ((3 * i + t) % 9) - 0.3 for t in range(5)] for i in range(5)])
    logp = torch.where(t64(MASK) > 0, old + d, old + 3.0).requires_grad_(True)
    loss, stats = policy_loss(alg, logp, old, adv, t64(MASK))
    loss.backward()
    want, want_grad = policy_reference(
        "ppo", cfg, logp.tolist(), old.tolist(), adv.tolist(), [[float(m) for m in r] for r in MASK]
    )
    assert loss.item() == pytest.approx(want, abs=TOL)
    assert torch.allclose(logp.grad, t64(want_grad), atol=TOL, rtol=0)
    assert 0 < stats.clip_fraction < 1 and torch.all(logp.grad[t64(MASK) == 0] == 0)


def test_explained_variance_against_the_definition():
    mask = t64(MASK)
    _, ret = ppo.advantages_and_returns(t64(REWARDS), t64(VALUES), mask, 1.0, 0.95)
    vals = t64(VALUES)
    total = torch.cat(
        [ppo.moments(ret, mask), ppo.moments(ret - vals * mask, mask)[1:]]
    )  # [n, sum R, sum R^2, sum (R - V), sum (R - V)^2]
    r = [ret[i, t].item() for i in range(5) for t in range(5) if MASK[i][t]]
    e = [ret[i, t].item() - VALUES[i][t] for i in range(5) for t in range(5) if MASK[i][t]]

    def var(xs):
        m = sum(xs) / len(xs)
        return sum((x - m) ** 2 for x in xs) / len(xs)

    assert ppo.explained_variance(total) == pytest.approx(1 - var(e) / var(r), abs=TOL)
    assert ppo.explained_variance(torch.tensor([4.0, 4.0, 4.0, 0.0, 0.0])) is None


# ----------------------------------------------------------------------- the backend


def _spec(**alg) -> RLPostTrainJobSpec:
    return RLPostTrainJobSpec.model_validate(
        {
            "model": {"config": {}, "tokenizer": "char:ab", "dtype": "float32"},
            "data": {"prompts": "x"},
            "algorithm": {"name": "ppo", "lr": 1e-2, **alg},
        }
    )


def _backend(**alg) -> TorchBackend:
    be = TorchBackend()
    be.setup(_spec(**alg), build_tokenizer(ModelSource(tokenizer="char:ab")).vocab_size)
    return be


def _batch(rewards=(1.0, 0.0, 1.0)):
    responses = [[3], [4], [3, 4, 2]]  # a, b; "ab<eos>" (length 3)
    samples = [
        {"sample_id": f"s{i}", "prompt_ids": [1, 3], "response_ids": r,
         "response_logprobs": [-1.1] * len(r), "reward": rw, "weight_version": 0}
        for i, (r, rw) in enumerate(zip(responses, rewards, strict=True))
    ]  # fmt: skip
    b = {"step": 0, "groups": [{"group_id": "g", "weight_version": 0, "samples": samples}]}
    return collate(Batch.model_validate(b), pad_id=0)


def test_a_step_trains_policy_and_critic_and_reports_the_critic():
    be = _backend()
    tb = _batch()
    rewards = batch_advantages(tb, be.spec)
    assert torch.equal(rewards, tb.rewards)  # ppo: the backend's critic makes advantages
    before = [p.detach().clone() for p in be.critic.parameters()]
    first = be.train_step(tb, rewards)
    assert first["value_mean"] == 0.0  # the head starts at 0
    assert first["returns_mean"] > 0 and first["value_loss"] > 0
    assert first["critic_grad_norm"] > 0 and first["grad_norm"] > 0
    moved = [not torch.equal(a, b) for a, b in zip(before, be.critic.parameters(), strict=True)]
    assert any(moved)
    for _ in range(5):
        stats = be.train_step(tb, rewards)
    assert stats["value_loss"] < first["value_loss"]  # the critic fits the returns
    assert stats["explained_variance"] is not None


def test_critic_state_round_trips_through_a_checkpoint(tmp_path):
    tb = _batch()
    be = _backend()
    be.train_step(tb, tb.rewards)
    checkpoint.save(tmp_path, 1, be.state_dict(), cursor=7)
    state = be.state_dict()["critic"]
    assert set(state) == {"model", "optimizer"} and state["optimizer"]["state"]
    resumed = _backend()
    loaded = checkpoint.load(tmp_path, 1)
    resumed.load_state_dict(loaded["backend"])
    for a, b in zip(be.critic.parameters(), resumed.critic.parameters(), strict=True):
        assert torch.equal(a, b)
    # The next step from the checkpoint equals the uninterrupted run's, critic included.
    want, got = be.train_step(tb, tb.rewards), resumed.train_step(tb, tb.rewards)
    assert got == want
    for a, b in zip(be.critic.parameters(), resumed.critic.parameters(), strict=True):
        assert torch.equal(a, b)
    # A checkpoint without a critic (another algorithm's run) is refused, not half-loaded.
    with pytest.raises(ValueError, match="no value model"):
        _backend().load_state_dict({k: v for k, v in loaded["backend"].items() if k != "critic"})


def test_megatron_and_ppo_only_fields_are_refused():
    from rlpost_trainer.backend import UnsupportedAlgorithm, make_backend

    from rlpost.models import ModelError

    spec = _spec()
    spec.trainer.backend = "megatron"
    with pytest.raises(UnsupportedAlgorithm, match="megatron backend trains no value model"):
        make_backend(spec)
    assert issubclass(UnsupportedAlgorithm, ModelError)  # the trainer exits 78 (InvalidSpec)
    assert any("needs trainer.backend torch" in e for e in semantic_errors(spec))
    assert semantic_errors(_spec(criticLr=1e-3, gamma=0.99, gaeLambda=1.0)) == []
    grpo = _spec(name="grpo", criticLr=1e-3)
    assert any("ppo's" in e for e in semantic_errors(grpo))
    alg = AlgorithmSpec(name="ppo")
    assert (alg.value_lr(), alg.gae_params()) == (alg.lr, (1.0, 0.95))
    for bad in [{"gamma": 1.5}, {"gaeLambda": -0.1}, {"criticLr": 0.0}]:
        with pytest.raises(ValueError):
            AlgorithmSpec.model_validate({"name": "ppo", **bad})


def test_the_trainer_refuses_ppo_on_megatron_with_exit_78(tmp_path):
    """`python -m rlpost_trainer` (the pod's command) says why and exits EX_CONFIG, which the
    operator turns into InvalidSpec, before any megatron import."""
    import os
    import subprocess
    import sys

    import yaml

    from tests.trainer.conftest import job_dict

    job = job_dict(algorithm={"name": "ppo"}, trainer={"backend": "megatron", "gpusPerPod": 0})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLPOST_")}
    env.update(RLPOST_CONFIG=str(tmp_path / "job.yaml"), RLPOST_BUFFER_URL="http://127.0.0.1:9",
               RLPOST_TERMINATION_LOG=str(tmp_path / "term"))  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "rlpost_trainer"], env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 78, out.stderr[-2000:]
    assert "megatron backend trains no value model" in (tmp_path / "term").read_text()
