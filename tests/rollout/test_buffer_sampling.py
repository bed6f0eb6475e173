"""Dynamic sampling (zero-std groups dropped, refilled) and the staleness rule at serve time."""

from __future__ import annotations

import json

import httpx

from tests.rollout.procs import ROOT, auth, free_port, write_job, write_prompts

ALTERNATING = """
import collections
_seen = collections.Counter()


def reward(prompt, response, label):
    # Prompts whose label is a multiple of 4 always score 0 (a zero-std group); the others
    # alternate 0, 1, 0, 1 over their group's samples (scored in order), so their std > 0.
    if int(label) % 4 == 0:
        return 0.0
    _seen[prompt] += 1
    return float(_seen[prompt] % 2)
"""


def test_zero_std_groups_are_dropped_and_refilled(procs, tmp_path):
    (tmp_path / "alt_reward.py").write_text(ALTERNATING)
    prompts = write_prompts(tmp_path / "p.jsonl", n=16)
    job = write_job(
        tmp_path,
        prompts,
        algorithm={"dynamicSampling": True, "rolloutBatchSize": 3},
        reward={"type": "custom", "function": "alt_reward:reward"},
    )
    _, engine = procs.engine(job)
    pythonpath = f"{tmp_path}:{ROOT}:{ROOT / 'rollout_image'}"
    _, url = procs.buffer(job, engine, tmp_path / "state", PYTHONPATH=pythonpath)
    r = httpx.get(f"{url}/batch", params={"step": 0, "timeout_s": 40}, headers=auth(), timeout=50)
    assert r.status_code == 200, r.text
    groups = r.json()["groups"]
    assert len(groups) == 3
    for g in groups:
        assert int(g["label"]) % 4 != 0
        assert sorted(s["reward"] for s in g["samples"]) == [0.0, 0.0, 1.0, 1.0]
    stats = httpx.get(f"{url}/stats", headers=auth(), timeout=10).json()
    assert stats["dropped_groups"].get("zero_std", 0) >= 1, stats  # dropped, then refilled
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'rlpost_samples_total{job="rtest",outcome="zero_std"}' in metrics


def group(gid: str, index: int, version: int) -> dict:
    samples = [
        {"sample_id": f"{gid}-{j}", "prompt_ids": [1], "response_ids": [3], "response": "a",
         "response_logprobs": [-1.0], "finish_reason": "length", "weight_version": version,
         "reward": float(j % 2)}
        for j in range(4)
    ]  # fmt: skip
    return {"group_id": gid, "prompt_index": index, "prompt": "0+0=", "label": "0",
            "weight_version": version, "samples": samples}  # fmt: skip


def test_stale_groups_are_discarded_counted_and_recorded(procs, tmp_path):
    """A state where groups of versions 0..2 wait while the trainer asks step 2 with
    maxStaleness 1: only versions >= 1 may train it."""
    job = write_job(tmp_path, write_prompts(tmp_path / "p.jsonl"), rollout={"maxStaleness": 1})
    state = tmp_path / "state"
    state.mkdir()
    events = [
        {"t": "accept", "group": group("old0", 0, 0)},
        {"t": "accept", "group": group("old1", 1, 0)},
        {"t": "serve", "step": 0, "cursor": 2, "group_ids": ["old0", "old1"], "stale": []},
        {"t": "accept", "group": group("a", 2, 0)},
        {"t": "accept", "group": group("b", 3, 0)},
        {"t": "accept", "group": group("c", 4, 1)},
        {"t": "accept", "group": group("d", 5, 1)},
        {"t": "serve", "step": 1, "cursor": 6, "group_ids": ["c", "d"], "stale": []},
        {"t": "accept", "group": group("e", 6, 1)},
        {"t": "accept", "group": group("f", 7, 2)},
        {"t": "version", "version": 2},
    ]
    (state / "buffer.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    dead_router = f"http://127.0.0.1:{free_port()}"
    _, url = procs.buffer(job, dead_router, state)
    r = httpx.get(f"{url}/batch", params={"step": 2, "timeout_s": 10}, headers=auth(), timeout=20)
    assert r.status_code == 200, r.text
    assert [g["group_id"] for g in r.json()["groups"]] == ["e", "f"]
    rec = httpx.get(f"{url}/records", headers=auth(), timeout=10).json()
    assert {(x["group_id"], x["step"]) for x in rec["discarded_stale"]} == {("a", 2), ("b", 2)}
    for st in rec["steps"]:
        assert all(st["step"] - g["weight_version"] <= 1 for g in st["groups"]), st
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'rlpost_samples_total{job="rtest",outcome="stale"} 8.0' in metrics
    assert 'rlpost_sample_staleness_count{job="rtest"} 2.0' in metrics
    # Asking an old step returns what it trained on; skipping ahead is refused.
    again = httpx.get(f"{url}/batch", params={"step": 1}, headers=auth(), timeout=10).json()
    assert [g["group_id"] for g in again["groups"]] == ["c", "d"]
    skip = httpx.get(f"{url}/batch", params={"step": 5}, headers=auth(), timeout=10)
    assert skip.status_code == 409 and "next step is 3" in skip.text
    assert httpx.get(f"{url}/batch", params={"step": 3}, timeout=10).status_code == 401
    assert (
        httpx.post(f"{url}/weight_version", json={"version": 1}, headers=auth()).status_code == 409
    )
