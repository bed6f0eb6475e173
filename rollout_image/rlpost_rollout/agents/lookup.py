"""The hidden-lookup task's agent (examples/hidden-lookup.yaml): `rollout.generate:
"rlpost_rollout.agents.lookup:generate"`.

The prompt is a key ("dbca="); the answer is the key's value in a table the model never
sees (a keyed hash of the key: one of the letters a-h). The one way to know it is the tool:
the policy emits "?" (the call character), the lookup tool's output (the value, one letter)
is injected, and the policy answers with one letter. Without the tool the best possible
reward is 1/8; with it, 1.0 ("call, then copy the tool's output").
"""

from __future__ import annotations

import hashlib

from rlpost_rollout.agents import tool_loop

LETTERS = "abcdefgh"
CALL = "?"
SECRET = b"rlpost-hidden-lookup"
BUDGET = tool_loop.Budget(max_calls=3, max_tokens=12, turn_tokens=1)


def value(key: str) -> str:
    """The hidden value of a key (the prompt without its trailing "=")."""
    digest = hashlib.sha256(SECRET + key.encode()).digest()
    return LETTERS[digest[0] % len(LETTERS)]


def lookup(prompt: str, so_far: str) -> str:
    """The tool: the value of the prompt's key."""
    return value(prompt.rstrip("="))


async def generate(prompt, prompt_ids, sampling, router):
    return await tool_loop.run(prompt, prompt_ids, sampling, router, lookup, CALL, BUDGET)
