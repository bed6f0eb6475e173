"""SIGKILL the buffer mid-run and restart it: no accepted group lost, none served twice."""

from __future__ import annotations

import signal

import httpx

from tests.rollout.procs import auth, write_job, write_prompts


def get_batch(url: str, step: int) -> dict:
    r = httpx.get(
        f"{url}/batch", params={"step": step, "timeout_s": 40}, headers=auth(), timeout=50
    )
    assert r.status_code == 200, r.text
    return r.json()


def train(url: str, steps: range, seen: dict[int, list[str]], engine: str) -> None:
    """What the trainer does: take batch s, bump the engine to version s + 1 (the weights
    themselves are the trainer's business, tested elsewhere), then tell the buffer."""
    for s in steps:
        seen[s] = [g["group_id"] for g in get_batch(url, s)["groups"]]
        r = httpx.post(
            f"{engine}/update_weight_version",
            json={"new_version": str(s + 1), "abort_all_requests": False},
            headers=auth(),
            timeout=10,
        )
        assert r.status_code == 200, r.text
        r = httpx.post(f"{url}/weight_version", json={"version": s + 1}, headers=auth(), timeout=10)
        assert r.status_code == 200, r.text


def test_sigkill_and_restart_loses_and_duplicates_nothing(procs, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", n=40)
    job = write_job(tmp_path, prompts, rollout={"maxStaleness": 1})
    _, engine = procs.engine(job)
    state = tmp_path / "state"
    proc, url = procs.buffer(job, engine, state)

    seen: dict[int, list[str]] = {}
    train(url, range(0, 4), seen, engine)
    # The driver is generating step 4 right now (async, k=1): kill it in the middle.
    stats = httpx.get(f"{url}/stats", headers=auth(), timeout=10).json()
    accepted_before = set(stats["ready_group_ids"]) | {g for gs in seen.values() for g in gs}
    assert stats["accepted_groups"] == len(accepted_before)
    proc.kill(signal.SIGKILL)
    assert proc.p.returncode == -signal.SIGKILL

    proc2, url2 = procs.buffer(job, engine, state)
    # A step served before the kill is served again identically (a retrying trainer).
    assert [g["group_id"] for g in get_batch(url2, 3)["groups"]] == seen[3]
    after = httpx.get(f"{url2}/stats", headers=auth(), timeout=10).json()
    assert after["cursor"] >= stats["cursor"] - stats["inflight_groups"], (stats, after)
    assert after["next_step"] == 4
    train(url2, range(4, 8), seen, engine)

    records = httpx.get(f"{url2}/records", headers=auth(), timeout=10).json()
    ready_now = set(
        httpx.get(f"{url2}/stats", headers=auth(), timeout=10).json()["ready_group_ids"]
    )
    served = [g for st in records["steps"] for g in st["groups"]]
    served_ids = [g["group_id"] for g in served]
    sample_ids = [sid for g in served for sid in g["sample_ids"]]
    assert [st["step"] for st in records["steps"]] == list(range(8))
    assert len(served_ids) == len(set(served_ids)) == 8 * 2, "a group was served twice"
    assert len(sample_ids) == len(set(sample_ids)) == 8 * 2 * 4
    prompt_indices = [g["prompt_index"] for g in served]
    assert len(prompt_indices) == len(set(prompt_indices)), "a prompt was trained twice"
    stale = {x["group_id"] for x in records["discarded_stale"]}
    lost = accepted_before - set(served_ids) - ready_now - stale
    assert not lost, f"accepted before the kill, gone after the restart: {lost}"
    for st in records["steps"]:
        for g in st["groups"]:
            assert st["step"] - g["weight_version"] <= 1
    assert "buffer state replayed" in proc2.output()


def test_resume_from_checkpoint_step_restores_the_cursor(procs, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", n=40)
    job = write_job(tmp_path, prompts, rollout={"maxStaleness": 1})
    _, engine = procs.engine(job)
    state = tmp_path / "state"
    proc, url = procs.buffer(job, engine, state)
    seen: dict[int, list[str]] = {}
    train(url, range(0, 5), seen, engine)
    ckpt = httpx.get(f"{url}/checkpoint", params={"step": 3}, headers=auth(), timeout=10).json()
    records = httpx.get(f"{url}/records", headers=auth(), timeout=10).json()
    assert ckpt["cursor"] == records["steps"][2]["cursor"]  # cursor when batch 2 was served

    # Kill everything of the buffer; the operator restarts it with RLPOST_RESUME_STEP=3.
    proc.kill(signal.SIGKILL)
    _, url2 = procs.buffer(job, engine, state, RLPOST_RESUME_STEP="3")
    health = httpx.get(f"{url2}/health", timeout=10).json()
    assert health["next_step"] == 3
    assert health["cursor"] >= ckpt["cursor"]
    again = httpx.get(f"{url2}/checkpoint", params={"step": 3}, headers=auth(), timeout=10).json()
    assert again == ckpt
    httpx.post(f"{url2}/weight_version", json={"version": 5}, headers=auth(), timeout=10)
    batch3 = get_batch(url2, 3)
    assert [g["group_id"] for g in batch3["groups"]] != seen[3]
    assert min(g["prompt_index"] for g in batch3["groups"]) >= ckpt["cursor"]
    rec = httpx.get(f"{url2}/records", headers=auth(), timeout=10).json()
    assert [st["step"] for st in rec["steps"]] == [0, 1, 2, 3]
    assert rec["resumes"] == [3]
