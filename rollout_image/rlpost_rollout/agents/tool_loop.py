"""A tool-use loop for a custom generate function, on token ids through `SampleRouter`.

The policy generates one turn (at most `turn_tokens` new tokens). A turn that ends with the
call character (`call`, e.g. "?") is a tool call: the tool runs on the sample's prompt and
the tokens it generated so far, its output is appended to the context as injected tokens
(loss_mask 0: not trained, logprob 0.0 placeholders), and the policy continues. The sample
ends on a turn that is not a call (its answer), on the engine's end-of-sequence, or when the
budget is spent: `max_calls` tool calls or `max_tokens` response tokens (then finish_reason
is "length" and the answer is empty).

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
    max_calls: int = 3  # tool calls per sample
    max_tokens: int = 12  # response tokens per sample (policy + injected)
    turn_tokens: int = 1  # new tokens per policy turn


async def run(
    prompt: str,
    prompt_ids: list[int],
    sampling: dict[str, Any],
    router,
    tool: Tool,
    call: str,
    budget: Budget = Budget(),
) -> dict[str, Any]:
    """One sample of the loop: the custom generate answer, with loss_mask (1 = policy token,
    0 = tool output) and info {"tool_calls", "turns", "tool_outputs", "budget_spent",
    "routing_keys"}."""
    (call_id,) = router.encode(call)
    ids: list[int] = []
    lps: list[float] = []
    mask: list[int] = []
    outputs: list[str] = []
    turns, finish, answer, spent = 0, "length", "", True
    seed = sampling.get("sampling_seed")
    while len(ids) < budget.max_tokens:
        room = min(budget.turn_tokens, budget.max_tokens - len(ids))
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
            if len(outputs) >= budget.max_calls:
                break  # one call too many: the budget is spent
            result = tool(prompt, router.decode(ids))
            outputs.append(result)
            injected = router.encode(result)[: budget.max_tokens - len(ids)]
            ids += injected
            lps += [0.0] * len(injected)
            mask += [0] * len(injected)
            continue
        if out["finish_reason"] == "length" and len(ids) >= budget.max_tokens:
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
