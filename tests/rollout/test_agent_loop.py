"""The built-in tool loop (rlpost_rollout.agents, docs/CONTRACTS.md "Tool calls"): scripted
against a fake router for the exact budget rules, and for real as `rollout.generate` of a
buffer behind the sglang-router (policy manual) and two reference engines: turns happen,
tool output is loss_mask 0 and policy tokens 1, the budget stops samples, one routing key a
sample."""

from __future__ import annotations

import json

import httpx
import pytest
from rlpost_rollout import extensions as ext
from rlpost_rollout.agents import lookup, tool_loop

from rlpost.models import CharTokenizer
from tests.rollout.procs import ROOT, auth, write_job

ALPHABET = "ab=?"  # a tiny vocabulary: the untrained policy calls the tool often (~1/7)
EXTENSION = """
from rlpost_rollout.agents import tool_loop

BUDGET = tool_loop.Budget(max_calls=1, max_tokens=6, turn_tokens=1)


def tool(prompt, so_far):
    return "ab="  # three injected tokens


async def agent(prompt, prompt_ids, sampling, router):
    return await tool_loop.run(prompt, prompt_ids, sampling, router, tool, "?", BUDGET)
"""


def scripted(tokens: str, tok: CharTokenizer):
    """A SampleRouter whose policy answers the scripted characters, one per call."""
    script = iter(tokens)

    async def raw(ids, rid, sampling, key):
        t = tok.encode(next(script), add_bos=False)[0]
        lp = [[-0.5, t, None]]
        return {"meta_info": {"output_token_logprobs": lp, "finish_reason": {"type": "length"}}}

    return ext.SampleRouter(raw, "g0-3", {"max_new_tokens": 1, "sampling_seed": 5}, tok, 0)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("script", "budget", "response", "mask", "calls", "finish", "text"),
    [
        ("b", tool_loop.Budget(), "b", [1], 0, "length", "b"),  # an answer, no call
        ("?a", tool_loop.Budget(), "?aa", [1, 0, 1], 1, "length", "a"),  # call, copy
        ("??b", tool_loop.Budget(), "?a?ab", [1, 0, 1, 0, 1], 2, "length", "b"),
        # max_calls=1: the second call spends the budget
        ("??", tool_loop.Budget(max_calls=1), "?a?", [1, 0, 1], 1, "length", ""),
        # max_tokens=4: two calls fill it, no room for an answer
        ("??b", tool_loop.Budget(max_tokens=4), "?a?a", [1, 0, 1, 0], 2, "length", ""),
    ],
)
async def test_the_loop_masks_tool_output_and_stops_on_the_budget(
    script, budget, response, mask, calls, finish, text
):
    tok = CharTokenizer("abcdefgh=?")
    router = scripted(script, tok)
    out = await tool_loop.run("abcd=", [1], router.sampling, router, lambda p, s: "a", "?", budget)
    assert tok.decode(out["response_ids"]) == response
    assert out["loss_mask"] == mask
    # policy tokens keep the engine's logprob; injected ones are 0.0 placeholders
    assert out["response_logprobs"] == [-0.5 if m else 0.0 for m in mask]
    assert (out["info"]["tool_calls"], out["finish_reason"], out["text"]) == (calls, finish, text)
    assert out["info"]["budget_spent"] == (text == "")
    assert router.sessions == ["g0-3"] * router.calls  # one routing key, the sample's
    assert router.calls == out["info"]["turns"]


def test_lookup_tool_reveals_the_label_the_data_generator_wrote():
    rows = [json.loads(x) for x in (ROOT / "examples" / "hidden-lookup.jsonl").open()][:50]
    assert all(lookup.lookup(r["prompt"], "") == r["label"] for r in rows)
    assert len({r["label"] for r in rows}) == len(lookup.LETTERS)  # not a constant


def test_agent_samples_through_a_real_buffer_router_and_engines(procs, tmp_path):
    (tmp_path / "agent_ext.py").write_text(EXTENSION)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": "ab=", "label": "b"}) + "\n" for _ in range(8))
    )
    job = write_job(
        tmp_path,
        prompts,
        model={"config": {}, "tokenizer": f"char:{ALPHABET}", "dtype": "float32"},
        algorithm={"groupSize": 8, "rolloutBatchSize": 16},
        rollout={"generate": "agent_ext:agent", "maxNewTokens": 1, "router": {"policy": "manual"}},
    )
    engines = [procs.engine(job)[1] for _ in range(2)]
    _, router = procs.router(job, engines)
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}:{ROOT / 'rollout_image'}"}
    _, url = procs.buffer(job, router, tmp_path / "state", **env)
    r = httpx.get(f"{url}/batch", params={"step": 0, "timeout_s": 90}, headers=auth(), timeout=100)
    assert r.status_code == 200, r.text
    samples = [s for g in r.json()["groups"] for s in g["samples"]]
    assert len(samples) == 128
    tok = CharTokenizer(ALPHABET)
    call, injected = tok.encode("?", add_bos=False), tok.encode("ab=", add_bos=False)
    for s in samples:
        ids, mask, info = s["response_ids"], s["loss_mask"], s["info"]
        # rebuild the expected mask: the policy's first "?" is the call (max_calls 1), the
        # tool's three tokens follow it (cut by the token budget); everything else is policy
        want, i, calls = [], 0, 0
        while i < len(ids):
            want.append(1)
            if ids[i : i + 1] == call and calls < 1:
                calls, n = 1, min(len(injected), len(ids) - i - 1)
                assert ids[i + 1 : i + 1 + n] == injected[:n], s
                want += [0] * n
                i += n
            i += 1
        assert calls == info["tool_calls"], s
        assert mask == want, s
        assert len(s["response_logprobs"]) == len(ids)
        assert all(lp == 0.0 for lp, m in zip(s["response_logprobs"], mask, strict=True) if m == 0)
        assert info["routing_keys"] == [s["sample_id"]]  # every turn of it under one key
    calls = [s["info"]["tool_calls"] for s in samples]
    assert sum(c > 0 for c in calls) >= 5, calls  # tool calls happened...
    answered = [s for s in samples if s["info"]["tool_calls"] and not s["info"]["budget_spent"]]
    assert answered, "no sample answered after a tool output"  # ...and turns after them
    assert all(s["info"]["turns"] == 2 for s in answered)
    stopped = [s for s in samples if s["info"]["budget_spent"]]
    assert stopped, "the budget never stopped a sample"
    assert all(s["response"].endswith("?") and s["finish_reason"] == "length" for s in stopped)
    assert all(len(s["response_ids"]) <= 6 and s["info"]["tool_calls"] <= 1 for s in samples)
    # every turn of every sample was one /generate the engines served
    served = sum(
        httpx.get(f"{u}/server_info", timeout=5).json()["internal_states"][0]["requests_total"]
        for u in engines
    )
    assert served >= sum(s["info"]["turns"] for s in samples)


@pytest.mark.asyncio
async def test_custom_generate_checks_the_loss_mask_and_info():
    class Row:
        prompt, prompt_ids = "ab=", (1, 5)

    router = ext.SampleRouter(None, "r", {"sampling_seed": 3}, CharTokenizer(ALPHABET), 0)
    base = {"response_ids": [3, 4], "response_logprobs": [-1.0, 0.0], "finish_reason": "stop"}

    def fn(**extra):
        async def gen(prompt, prompt_ids, sampling, router):
            return {**base, **extra}

        return gen

    out = await ext.custom_generate(fn(loss_mask=[1, 0], info={"k": 1}), "g", Row, router)
    assert (out["loss_mask"], out["info"]) == ([1, 0], {"k": 1})
    for bad in ([1], [1, 2], "11"):
        with pytest.raises(ext.GenerateError, match="loss_mask must be a list of 0/1"):
            await ext.custom_generate(fn(loss_mask=bad), "g", Row, router)
    with pytest.raises(ext.GenerateError, match="info must be a dict"):
        await ext.custom_generate(fn(info=[1]), "g", Row, router)
