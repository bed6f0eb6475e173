"""POST /eval (spec.eval): greedy and pass@k over the held-out prompts, computed from the
engine's own answers to the same requests, repeatable, and invisible to training: the cursor,
the durable log and the batches do not change."""

from __future__ import annotations

import json
import time

import httpx
from rlpost_rollout.buffer.evaluation import eval_seed
from rlpost_rollout.protocol import generate_payload

from rlpost.api import ModelSource
from rlpost.models import build_tokenizer
from tests.rollout.procs import ALPHABET, ROOT, auth, write_job, write_prompts

DIGIT_REWARD = """
def reward(prompt, response, label):
    # 1 when the response starts with a digit: a random model scores it about half the time.
    return 1.0 if response[:1].isdigit() else 0.0
"""
K = 3


def engine_reward(engine: str, prompt_ids: list[int], temperature: float, seed: int) -> float:
    body = generate_payload(
        prompt_ids, max_new_tokens=4, temperature=temperature, sampling_seed=seed
    )
    text = httpx.post(f"{engine}/generate", json=body, timeout=30).json()["text"]
    return 1.0 if text[:1].isdigit() else 0.0


def wait_settled(url: str) -> dict:
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        stats = httpx.get(f"{url}/stats", headers=auth(), timeout=10).json()
        if stats["ready_groups"] == 2 and stats["inflight_groups"] == 0:
            return stats
        time.sleep(0.2)
    raise AssertionError(f"training groups never settled: {stats}")


def test_eval_scores_held_out_prompts_and_leaves_training_alone(procs, tmp_path):
    (tmp_path / "digit_reward.py").write_text(DIGIT_REWARD)
    train = write_prompts(tmp_path / "train.jsonl", n=20)
    held_out = [{"prompt": f"{i}+{i + 1}=", "label": str(2 * i + 1)} for i in range(12)]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
    job = write_job(
        tmp_path,
        train,
        reward={"type": "custom", "function": "digit_reward:reward"},
        eval={"prompts": str(tmp_path / "eval.jsonl"), "intervalSteps": 1, "samples": K,
              "temperature": 1.0, "maxNewTokens": 4},
        seed=7,
    )  # fmt: skip
    _, engine = procs.engine(job)
    pythonpath = f"{tmp_path}:{ROOT}:{ROOT / 'rollout_image'}"
    state = tmp_path / "state"
    _, url = procs.buffer(job, engine, state, PYTHONPATH=pythonpath)

    before = wait_settled(url)
    log_before = (state / "buffer.jsonl").read_bytes()
    r = httpx.post(f"{url}/eval", json={"step": 4}, headers=auth(), timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["step"] == 4 and got["weight_version"] == 0
    assert got["n_prompts"] == 12 and got["k"] == K and got["reward_errors"] == 0

    # The same numbers from the engine itself: greedy, then the k seeded samples per prompt.
    tok = build_tokenizer(ModelSource(tokenizer=f"char:{ALPHABET}", config={}))
    greedy, sampled = [], []
    for i, row in enumerate(held_out):
        ids = list(tok.encode(row["prompt"]))
        greedy.append(engine_reward(engine, ids, 0.0, eval_seed(7, i, 0)))
        sampled.append([engine_reward(engine, ids, 1.0, eval_seed(7, i, j)) for j in range(K)])
    assert got["greedy_reward_mean"] == sum(greedy) / 12
    assert got["pass_at_k"] == sum(max(s) for s in sampled) / 12
    assert got["mean_reward_at_k"] == sum(map(sum, sampled)) / (12 * K)
    assert 0 < got["mean_reward_at_k"] < got["pass_at_k"]  # the samples differ

    # Repeatable (same seeds, same weights), and a retried step gets its first answer.
    again = httpx.post(f"{url}/eval", json={"step": 5}, headers=auth(), timeout=60).json()
    for key in ("greedy_reward_mean", "pass_at_k", "mean_reward_at_k"):
        assert again[key] == got[key], key
    retry = httpx.post(f"{url}/eval", json={"step": 4}, headers=auth(), timeout=60).json()
    assert retry == got

    # Training did not see any of it.
    after = httpx.get(f"{url}/stats", headers=auth(), timeout=10).json()
    assert after["cursor"] == before["cursor"] == 2
    assert after["accepted_groups"] == before["accepted_groups"]
    assert (state / "buffer.jsonl").read_bytes() == log_before
    batch = httpx.get(f"{url}/batch", params={"step": 0}, headers=auth(), timeout=30).json()
    train_prompts = {f"{i}+{i}=" for i in range(20)}
    assert {g["prompt"] for g in batch["groups"]} <= train_prompts
    assert not any(s["sample_id"].startswith("eval") for g in batch["groups"] for s in g["samples"])
    r = httpx.post(f"{url}/eval", json={"step": 1}, timeout=10)
    assert r.status_code == 401  # the token is required
