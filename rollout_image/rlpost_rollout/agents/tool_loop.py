"""A tool-use loop for a custom generate function, on token ids through `SampleRouter`.

The policy generates one turn (at most `turn_tokens` new tokens, default the sample's
max_new_tokens = rollout.maxNewTokens). A turn that ends with the call character (`call`,
e.g. "?") is a tool call: the tool runs on the sample's prompt and the tokens it generated so
far, its output is appended to the context as injected tokens (loss_mask 0: not trained,
logprob 0.0 placeholders), and the policy continues. The sample ends on a turn that is not a
call (its answer), on the engine's end-of-sequence, or when the budget is spent (then
finish_reason is "length" and the answer is empty): the job's per-sample budget, which the
router helper carries (`router.max_turns`, `router.max_tokens`: rollout.agent maxTurns and
maxTokens), or a tighter one the agent passes (`Budget`: max_calls tool calls, max_turns,
max_tokens response tokens, policy + injected). A call on the last turn is not run (no turn
would be left to use its output).

All turns of a sample go out with one routing key (the sample's: SampleRouter's default),
so under rollout.router.policy `manual` they reach one engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# tool(prompt, the sample's text so far) -> the text to inject
Tool = Callable[[str, str], str]


@dataclass(frozen=True)
class Budget:
    """An agent's own limits, on top of the job's (router.max_turns / max_tokens); None:
    only the job's."""

    max_calls: int | None = None  # tool calls per sample
    max_tokens: int | None = None  # response tokens per sample (policy + injected)
    turn_tokens: int | None = None  # new tokens per policy turn (None: max_new_tokens)
    max_turns: int | None = None  # policy turns (/generate calls) per sample


def _least(*limits: int | None) -> int | None:
    given = [x for x in limits if x is not None]
    return min(given) if given else None


async def run(
    prompt: str,
    prompt_ids: list[int],
    sampling: dict[str, Any],
    router,
    tool: Tool,
    call: str,
    budget: Budget | None = None,
) -> dict[str, Any]:
    """One sample of the loop: the custom generate answer, with loss_mask (1 = policy token,
    0 = tool output) and info {"tool_calls", "turns", "tool_outputs", "budget_spent",
    "routing_keys"}."""
    (call_id,) = router.encode(call)
    budget = budget or Budget()
    max_turns = _least(budget.max_turns, getattr(router, "max_turns", None))
    max_tokens = _least(budget.max_tokens, getattr(router, "max_tokens", None))
    turn_tokens = budget.turn_tokens or int(sampling.get("max_new_tokens") or 1)
    ids: list[int] = []
    lps: list[float] = []
    mask: list[int] = []
    outputs: list[str] = []
    turns, finish, answer, spent = 0, "length", "", True
    seed = sampling.get("sampling_seed")
    while max_tokens is None or len(ids) < max_tokens:
        if max_turns is not None and turns >= max_turns:
            break  # no turn left
        room = turn_tokens if max_tokens is None else min(turn_tokens, max_tokens - len(ids))
        over = {"max_new_tokens": room}
        if seed is not None:  # another draw each turn, still fixed by the sample's seed
            over["sampling_seed"] = seed + turns
        out = await router.generate(list(prompt_ids) + ids, **over)
        turns += 1
        new = list(out["response_ids"])
        ids += new
        lps += list(out["response_logprobs"])
        mask += [1] * len(new)
        if new and new[-1] == call_id:
            if budget.max_calls is not None and len(outputs) >= budget.max_calls:
                break  # one call too many: the budget is spent
            if max_turns is not None and turns >= max_turns:
                break  # a call on the last turn: nothing could use its output
            result = tool(prompt, router.decode(ids))
            outputs.append(result)
            injected = router.encode(result)
            if max_tokens is not None:
                injected = injected[: max_tokens - len(ids)]
            ids += injected
            lps += [0.0] * len(injected)
            mask += [0] * len(injected)
            continue
        if out["finish_reason"] == "length" and max_tokens is not None and len(ids) >= max_tokens:
            break  # cut by the token budget mid-answer
        finish, answer, spent = out["finish_reason"], router.decode(new), False
        break
    return {
        "response_ids": ids,
        "response_logprobs": lps,
        "loss_mask": mask,
        "finish_reason": finish,
        "text": answer,
        "info": {
            "tool_calls": len(outputs),
            "turns": turns,
            "tool_outputs": outputs,
            "budget_spent": spent,  # ended by the budget, not by an answer
            "routing_keys": list(dict.fromkeys(getattr(router, "sessions", []))),
        },
    }
