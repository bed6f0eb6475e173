"""PPO's critic pieces (algorithms/critic.py; ppo as a whole: test_ppo.py) against
hand-written references: GAE as the explicit discounted sum of TD errors over each row's
trained tokens, the clipped value loss and its gradient, float64 within 1e-6."""

from __future__ import annotations

import pytest
import torch
from rlpost_trainer.algorithms.critic import gae, terminal_rewards, value_loss

TOL = 1e-6
MASK = [
    [0, 1, 1, 0, 1],  # a hole (tool output) between trained tokens
    [0, 0, 1, 0, 0],  # length 1
    [0, 0, 0, 0, 0],  # nothing trained
    [1, 1, 1, 1, 1],
]
VALUES = [[0.1 * (i + 1) - 0.07 * t for t in range(5)] for i in range(4)]
OUTCOME = [1.0, -0.5, 2.0, 0.25]


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


def reference_gae(rewards, values, mask, gamma, lam):
    adv = [[0.0] * len(r) for r in rewards]
    for i in range(len(rewards)):
        pos = [t for t, m in enumerate(mask[i]) if m]
        deltas = []
        for k, p in enumerate(pos):
            nxt = values[i][pos[k + 1]] if k + 1 < len(pos) else 0.0
            deltas.append(rewards[i][p] + gamma * nxt - values[i][p])
        for k, p in enumerate(pos):
            adv[i][p] = sum((gamma * lam) ** j * deltas[k + j] for j in range(len(pos) - k))
    return adv


def test_terminal_rewards_sit_on_the_last_trained_token():
    r = terminal_rewards(t64(OUTCOME), t64(MASK))
    want = [[0, 0, 0, 0, 1.0], [0, 0, -0.5, 0, 0], [0] * 5, [0, 0, 0, 0, 0.25]]
    assert r.tolist() == want


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 1.0), (1.0, 0.95), (0.9, 0.8), (0.99, 0.0)])
def test_gae_matches_the_discounted_sum_of_td_errors(gamma, lam):
    rewards = terminal_rewards(t64(OUTCOME), t64(MASK))
    rewards[3, 1] = 0.3  # an intermediate (process) reward too
    adv, ret = gae(rewards, t64(VALUES), t64(MASK), gamma, lam)
    want = reference_gae(rewards.tolist(), VALUES, MASK, gamma, lam)
    assert torch.allclose(adv, t64(want), atol=TOL, rtol=0)
    want_ret = [[(want[i][t] + VALUES[i][t]) * MASK[i][t] for t in range(5)] for i in range(4)]
    assert torch.allclose(ret, t64(want_ret), atol=TOL, rtol=0)
    if gamma == 1.0 and lam == 1.0:  # Monte Carlo: the return is the reward-to-go
        assert ret[0, 1].item() == pytest.approx(1.0) and ret[3, 0].item() == pytest.approx(0.55)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
@pytest.mark.parametrize("clip", [None, 0.05])
def test_value_loss_and_gradient_match_the_reference(agg, clip):
    old = t64(VALUES)
    values = (old + t64([[0.02, -0.1, 0.04, 0.3, -0.06]] * 4)).requires_grad_(True)
    returns = t64([[0.5, -0.2, 0.1, 0.0, 0.3]] * 4)
    loss = value_loss(values, old, returns, t64(MASK), clip, agg)
    loss.backward()
    v, o, r = values.tolist(), old.tolist(), returns.tolist()
    trained = [[t for t in range(5) if MASK[i][t]] for i in range(4)]
    n_tok = sum(len(x) for x in trained)
    n_seq = sum(1 for x in trained if x)
    want, grad = 0.0, [[0.0] * 5 for _ in range(4)]
    for i in range(4):
        for t in trained[i]:
            scale = {
                "token-mean": 1 / n_tok,
                "seq-mean-token-sum": 1 / n_seq,
                "seq-mean-token-mean": 1 / n_seq / len(trained[i]),
            }[agg]
            e, d = (v[i][t] - r[i][t]) ** 2, 2 * (v[i][t] - r[i][t])
            if clip is not None:
                c = o[i][t] + min(max(v[i][t] - o[i][t], -clip), clip)
                if (c - r[i][t]) ** 2 > e:
                    e = (c - r[i][t]) ** 2
                    d = 0.0 if abs(v[i][t] - o[i][t]) > clip else 2 * (c - r[i][t])
            want += 0.5 * scale * e
            grad[i][t] = 0.5 * scale * d
    assert loss.item() == pytest.approx(want, abs=TOL)
    assert torch.allclose(values.grad, t64(grad), atol=TOL, rtol=0)
