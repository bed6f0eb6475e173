"""The per-sample budget of a multi-turn rollout (spec `rollout.agent`: maxTurns, maxTokens):
validated in the spec, enforced by the router helper (SampleRouter) for any custom generate
function, and what the built-in tool loop reads instead of constants."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from rlpost_rollout import extensions as ext
from rlpost_rollout.agents import tool_loop

from rlpost.api import RLPostTrainJob
from rlpost.models import CharTokenizer

TOK = CharTokenizer("abcdefgh=?")


def job(**rollout) -> RLPostTrainJob:
    return RLPostTrainJob.model_validate(
        {
            "apiVersion": "rlpost.dev/v1alpha1",
            "kind": "RLPostTrainJob",
            "metadata": {"name": "b"},
            "spec": {
                "model": {"config": {}, "tokenizer": "char:ab"},
                "data": {"prompts": "p.jsonl"},
                "rollout": rollout,
            },
        }
    )


def test_the_budget_comes_from_the_spec_with_defaults():
    assert job(maxNewTokens=3).spec.rollout.sample_budget() == (16, 48)  # 16 turns x 3
    spec = job(maxNewTokens=1, agent={"maxTurns": 4, "maxTokens": 12}).spec.rollout
    assert spec.sample_budget() == (4, 12)
    assert spec.wire()["agent"] == {"maxTurns": 4, "maxTokens": 12}


@pytest.mark.parametrize(
    ("agent", "where", "says"),
    [
        ({"maxTurns": 0}, ("rollout", "agent", "maxTurns"), "greater than or equal to 1"),
        ({"maxTokens": -3}, ("rollout", "agent", "maxTokens"), "greater than or equal to 1"),
        ({"maxTurns": "many"}, ("rollout", "agent", "maxTurns"), "valid integer"),
        ({"maxTurn": 3}, ("rollout", "agent", "maxTurn"), "Extra inputs are not permitted"),
    ],
)
def test_a_bad_budget_is_a_validation_error_naming_the_field(agent, where, says):
    with pytest.raises(ValidationError) as info:
        job(agent=agent)
    errors = info.value.errors()
    assert any(e["loc"][-3:] == where and says in e["msg"] for e in errors), errors


def scripted(tokens: str, budget: ext.SampleBudget, prompt=(1,)):
    """A SampleRouter whose policy answers the scripted characters, one per call; records
    each call's max_new_tokens."""
    script = iter(tokens)
    asked: list[int] = []

    async def raw(ids, rid, sampling, key):
        asked.append(sampling["max_new_tokens"])
        t = TOK.encode(next(script), add_bos=False)[0]
        lp = [[-0.5, t, None]]
        return {"meta_info": {"output_token_logprobs": lp, "finish_reason": {"type": "length"}}}

    router = ext.SampleRouter(
        raw, "g0-1", {"max_new_tokens": 1, "sampling_seed": 5}, TOK, 0,
        budget=budget, prompt_ids=list(prompt),
    )  # fmt: skip
    return router, asked


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("script", "turns", "tokens", "response", "calls", "text"),
    [
        ("?a", 4, 12, "?aa", 1, "a"),  # call, copy: within both
        ("???b", 4, 12, "?a?a?ab", 3, "b"),  # 3 calls and the answer: 4 turns
        ("????", 4, 12, "?a?a?a?", 3, ""),  # the 4th turn is a call: no turn left to answer
        ("???b", 3, 12, "?a?a?", 2, ""),  # maxTurns 3: the call on turn 3 is not run
        ("??b", 4, 4, "?a?a", 2, ""),  # maxTokens 4: two calls fill it, no room to answer
        ("??b", 4, 6, "?a?ab", 2, "b"),  # room left: the answer fits
    ],
)
async def test_the_tool_loop_stops_on_the_spec_budget(script, turns, tokens, response, calls, text):
    router, _ = scripted(script, ext.SampleBudget(max_turns=turns, max_tokens=tokens))
    out = await tool_loop.run("abcd=", [1], router.sampling, router, lambda p, s: "a", "?")
    assert TOK.decode(out["response_ids"]) == response
    assert (out["info"]["tool_calls"], out["text"]) == (calls, text)
    assert out["info"]["budget_spent"] == (text == "")
    assert router.calls == out["info"]["turns"] <= turns
    assert len(out["response_ids"]) <= tokens


@pytest.mark.asyncio
async def test_the_router_refuses_calls_beyond_the_budget_and_cuts_max_new_tokens():
    # any custom generate function: turns beyond maxTurns are refused...
    router, asked = scripted("abc", ext.SampleBudget(max_turns=2, max_tokens=50))
    await router.generate([1])
    await router.generate([1, 2], max_new_tokens=1)
    assert router.turns_left == 0
    with pytest.raises(ext.BudgetSpent, match="maxTurns"):
        await router.generate([1, 2, 3])
    # ...and each call's max_new_tokens is cut to the response tokens left; injected tokens
    # (input_ids that continue the prompt) count as response
    router, asked = scripted("ab", ext.SampleBudget(max_turns=9, max_tokens=4))
    router.sampling["max_new_tokens"] = 10
    await router.generate([1])
    assert asked == [4] and router.tokens_left([1, 3]) == 3
    await router.generate([1, 3, 7, 7])  # 1 generated + 2 injected: 1 left
    assert asked == [4, 1]
    with pytest.raises(ext.BudgetSpent, match="maxTokens"):
        await router.generate([1, 3, 7, 7, 4])
    # a custom generate answering more tokens than the budget is refused (generate_error)

    class Row:
        prompt, prompt_ids = "ab=", (1,)

    async def long(prompt, prompt_ids, sampling, router):
        return {"response_ids": [3] * 5, "response_logprobs": [-1.0] * 5, "finish_reason": "stop"}

    router, _ = scripted("", ext.SampleBudget(max_turns=2, max_tokens=4))
    with pytest.raises(ext.GenerateError, match=r"5 response tokens, over .* budget of 4"):
        await ext.custom_generate(long, "rollout.generate 'm:long'", Row, router)
