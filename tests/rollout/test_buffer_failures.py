"""Malformed rows, a reward that raises, an unreachable engine: clear errors, no silent loss,
no hang."""

from __future__ import annotations

import json
import time

import httpx

from tests.rollout.procs import auth, free_port, write_job, write_prompts


def test_malformed_rows_are_rejected_by_file_and_line_and_counted(procs, tmp_path):
    prompts = tmp_path / "p.jsonl"
    good = [json.dumps({"prompt": f"{i}+{i}=", "label": str(2 * i)}) for i in range(6)]
    prompts.write_text(
        "\n".join(
            [
                good[0],
                "{not json",
                json.dumps({"question": "1+1=", "label": "2"}),  # wrong prompt key
                good[1],
                json.dumps({"prompt": "1+1=?!", "label": "2"}),  # chars outside the alphabet
                json.dumps({"prompt": "2+2="}),  # no label
                *good[2:],
            ]
        )
        + "\n"
    )
    job = write_job(tmp_path, prompts)
    _, engine = procs.engine(job)
    proc, url = procs.buffer(job, engine, tmp_path / "state")
    stats = httpx.get(f"{url}/stats", headers=auth(), timeout=10).json()
    where = {r["where"].rsplit(":", 1)[1]: r["reason"] for r in stats["rejected_rows"]}
    assert set(where) == {"2", "3", "5", "6"}, where
    assert "not valid JSON" in where["2"]
    assert "missing prompt key 'prompt'" in where["3"]
    assert "alphabet" in where["5"]
    assert "missing label key 'label'" in where["6"]
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'rlpost_dataset_rows_rejected_total{job="rtest"} 4.0' in metrics
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert any(f"{prompts}:2" in e for e in health["errors"]), health
    log = proc.output()
    for line in ("2", "3", "5", "6"):
        assert f"{prompts}:{line}" in log
    # The good rows still train.
    r = httpx.get(f"{url}/batch", params={"step": 0, "timeout_s": 30}, headers=auth(), timeout=40)
    assert r.status_code == 200, r.text


def test_a_dataset_with_only_bad_rows_fails_at_start(procs, tmp_path):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text('{"nope": 1}\n[1, 2]\n')
    job = write_job(tmp_path, prompts)
    proc, _ = procs.buffer(job, "http://127.0.0.1:9", tmp_path / "state", wait=False)
    assert proc.p.wait(timeout=30) != 0
    out = proc.output()
    assert "has no usable rows (2 rejected" in out
    assert f"{prompts}:1" in out and f"{prompts}:2" in out


REWARD_MODULE = """
def flaky(prompt, response, label):
    if label == "6":
        raise RuntimeError("judge exploded on purpose")
    return 1.0 if response.startswith(label[:1]) else 0.0


def always_raises(prompt, response, label):
    raise ValueError("no reward today")
"""


def test_a_reward_that_raises_fails_its_samples_and_the_run_goes_on(procs, tmp_path):
    (tmp_path / "my_rewards.py").write_text(REWARD_MODULE)
    prompts = write_prompts(tmp_path / "p.jsonl", n=10)  # label "6" is the prompt "3+3="
    job = write_job(tmp_path, prompts, reward={"type": "custom", "function": "my_rewards:flaky"})
    _, engine = procs.engine(job)
    pythonpath = f"{tmp_path}:{procs_pythonpath()}"
    proc, url = procs.buffer(job, engine, tmp_path / "state", PYTHONPATH=pythonpath)
    served = []
    for step in range(5):
        r = httpx.get(
            f"{url}/batch", params={"step": step, "timeout_s": 30}, headers=auth(), timeout=40
        )
        assert r.status_code == 200, r.text
        served += r.json()["groups"]
        # As the trainer does it: the engines get the new version first, then the buffer.
        httpx.post(
            f"{engine}/update_weight_version",
            json={"new_version": str(step + 1)},
            headers=auth(),
        )
        httpx.post(f"{url}/weight_version", json={"version": step + 1}, headers=auth())
    stats = httpx.get(f"{url}/stats", headers=auth(), timeout=10).json()
    assert stats["reward_errors"] == 4, stats  # the 4 samples of prompt "3+3="
    assert stats["dropped_groups"] == {"reward_error": 1}
    assert all(g["label"] != "6" for g in served)
    assert all(s["reward"] in (0.0, 1.0) for g in served for s in g["samples"])
    out = proc.output()
    assert "judge exploded on purpose" in out and "reward failed" in out
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert any("judge exploded" in e for e in health["errors"]), health


def test_a_reward_that_always_raises_times_out_the_batch_with_the_reason(procs, tmp_path):
    (tmp_path / "my_rewards.py").write_text(REWARD_MODULE)
    prompts = write_prompts(tmp_path / "p.jsonl", n=10)
    job = write_job(
        tmp_path, prompts, reward={"type": "custom", "function": "my_rewards:always_raises"}
    )
    _, engine = procs.engine(job)
    pythonpath = f"{tmp_path}:{procs_pythonpath()}"
    _, url = procs.buffer(job, engine, tmp_path / "state", PYTHONPATH=pythonpath)
    started = time.monotonic()
    r = httpx.get(f"{url}/batch", params={"step": 0, "timeout_s": 4}, headers=auth(), timeout=20)
    assert time.monotonic() - started < 10
    assert r.status_code == 504
    detail = r.json()["detail"]
    assert "0/2 groups valid" in detail and "no reward today" in detail, detail


def test_unreachable_engine_is_reported_and_the_batch_times_out_then_recovers(procs, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl")
    job = write_job(tmp_path, prompts)
    port = free_port()  # nothing listens here yet
    dead = f"http://127.0.0.1:{port}"
    proc, url = procs.buffer(job, dead, tmp_path / "state")
    started = time.monotonic()
    r = httpx.get(f"{url}/batch", params={"step": 0, "timeout_s": 3}, headers=auth(), timeout=20)
    assert time.monotonic() - started < 8, "the batch request must not hang"
    assert r.status_code == 504
    assert f"router {dead} unreachable" in r.json()["detail"]
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert health["status"] == "degraded" and health["router_ok"] is False
    assert httpx.get(f"{url}/ready", timeout=10).status_code == 503
    assert "generate failed; retrying with backoff" in proc.output()

    # The engine comes up on that address: the driver's retries get through, nothing lost.
    import sys

    from tests.rollout.procs import Proc, env_for  # noqa: F401 - same helpers as procs.engine

    eng = procs.start(
        "late-engine",
        [sys.executable, "-m", "rlpost_rollout.engine", "--host", "127.0.0.1", "--port", str(port)],
        env_for(job),
    )
    r = httpx.get(f"{url}/batch", params={"step": 0, "timeout_s": 45}, headers=auth(), timeout=60)
    assert r.status_code == 200, (r.text, eng.output()[-2000:])
    assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
    assert httpx.get(f"{url}/ready", timeout=10).status_code == 200


def procs_pythonpath() -> str:
    from tests.rollout.procs import ROOT

    return f"{ROOT}:{ROOT / 'rollout_image'}"
