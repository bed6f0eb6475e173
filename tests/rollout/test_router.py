"""The real sglang-router (PyPI) in front of two reference engines."""

from __future__ import annotations

import httpx

from tests.rollout.procs import write_job, write_prompts


def requests_served(url: str) -> int:
    return httpx.get(f"{url}/server_info", timeout=5).json()["internal_states"][0]["requests_total"]


def start(procs, tmp_path, policy: str):
    prompts = write_prompts(tmp_path / "p.jsonl")
    job = write_job(tmp_path, prompts, rollout={"router": {"policy": policy}})
    urls = [procs.engine(job)[1] for _ in range(2)]
    _, router = procs.router(job, urls)
    return urls, router


def generate(router: str, text: str, headers=None) -> dict:
    body = {"text": text, "sampling_params": {"max_new_tokens": 3, "temperature": 1.0}}
    r = httpx.post(f"{router}/generate", json=body, headers=headers or {}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_router_spreads_requests_over_both_engines(procs, tmp_path):
    engines, router = start(procs, tmp_path, "round_robin")
    before = [requests_served(u) for u in engines]
    for i in range(8):
        out = generate(router, f"{i}+{i}=")
        assert out["meta_info"]["completion_tokens"] >= 1
    served = [requests_served(u) - b for u, b in zip(engines, before, strict=True)]
    assert sum(served) == 8, served
    assert min(served) >= 3, f"round_robin should use both engines: {served}"


def test_routing_key_keeps_a_multi_turn_session_on_one_engine(procs, tmp_path):
    engines, router = start(procs, tmp_path, "manual")
    homes = {}
    # The router picks a home per new key at random; 16 keys all landing on one of two
    # engines would happen by chance once in 32768 runs.
    for session in [f"session-{i}" for i in range(16)]:
        headers = {"X-SMG-Routing-Key": session}
        before = [requests_served(u) for u in engines]
        conversation = [{"role": "user", "content": "1+1="}]
        for _turn in range(3):  # each turn resends the growing conversation, like an agent
            r = httpx.post(
                f"{router}/v1/chat/completions",
                json={"messages": conversation, "max_tokens": 2, "temperature": 1.0},
                headers=headers,
                timeout=30,
            )
            assert r.status_code == 200, r.text
            reply = r.json()["choices"][0]["message"]["content"]
            conversation += [{"role": "assistant", "content": reply},
                             {"role": "user", "content": "2"}]  # fmt: skip
        delta = [requests_served(u) - b for u, b in zip(engines, before, strict=True)]
        assert sorted(delta) == [0, 3], f"session {session} was split across engines: {delta}"
        homes[session] = delta.index(3)
    assert set(homes.values()) == {0, 1}, f"all sessions on one engine: {homes}"
