"""The hidden-lookup task's agent (examples/hidden-lookup.yaml): `rollout.generate:
"rlpost_rollout.agents.lookup:generate"`.

The prompt is a key ("dbcadb="); the answer is the key's value in a table the model never
sees (a keyed hash of the key: one of the letters a-d). The one way to know it is the tool:
the policy emits "?" (the call character), the lookup tool's output (the value, one letter)
is injected, and the policy answers with one letter.

The task's protocol: an answer counts only after a lookup (like "cite your source"); one
given without a tool call is returned as no answer (text ""). Without it a tiny policy
settles for guessing (reward 1/4 with no tool, the best possible) before it ever learns to
copy the tool's output; with it, the tool path is the only one that pays.

The budget is the job's (rollout.agent: examples/hidden-lookup.yaml gives 4 turns, so at
most 3 lookups, and 12 response tokens); a turn is rollout.maxNewTokens = 1 token.
"""

from __future__ import annotations

import hashlib

from rlpost_rollout.agents import tool_loop

LETTERS = "abcd"
KEY_LENGTH = 6
CALL = "?"
SECRET = b"rlpost-hidden-lookup"


def value(key: str) -> str:
    """The hidden value of a key (the prompt without its trailing "=")."""
    digest = hashlib.sha256(SECRET + key.encode()).digest()
    return LETTERS[digest[0] % len(LETTERS)]


def lookup(prompt: str, so_far: str) -> str:
    """The tool: the value of the prompt's key."""
    return value(prompt.rstrip("="))


async def generate(prompt, prompt_ids, sampling, router):
    out = await tool_loop.run(prompt, prompt_ids, sampling, router, lookup, CALL)
    if out["info"]["tool_calls"] == 0:
        out["text"] = ""  # an answer without a lookup does not count
    return out
