"""The multi-turn tool example (examples/hidden-lookup.yaml) learns through `rlpost run`: the
policy learns to call the lookup tool and copy its output, well above chance; the samples it
trained on exclude exactly the tool's output from the loss (docs/CONTRACTS.md, "Tool calls")."""

from __future__ import annotations

import pytest
import yaml
from rlpost_rollout.agents import lookup

from rlpost.models import CharTokenizer
from tests.loop.conftest import ROOT, first_step_reaching, learning_summary, read_jsonl
from tests.loop.test_learning import run_cli

EXAMPLE = ROOT / "examples" / "hidden-lookup.yaml"
# Uniform over 9 tokens, an answer counting only after a call: call then copy, after 1-3
# calls (examples/hidden-lookup.yaml). Without the tool no policy beats 1/4 (one of a-d).
CHANCE = (1 / 9) ** 2 * (1 + 1 / 9 + 1 / 81)  # ~0.014
NO_TOOL_BEST = 0.25
# The example's per-sample budget (rollout.agent): every turn but the last may be a lookup.
MAX_CALLS = yaml.safe_load(EXAMPLE.read_text())["spec"]["rollout"]["agent"]["maxTurns"] - 1


def expected_mask(ids: list[int], key: str, tok: CharTokenizer) -> list[int]:
    """The mask recomputed from the tool: each policy "?" (up to max_calls) is followed by
    the tool's output for the key, injected (0); every other token is the policy's (1)."""
    (call,) = tok.encode(lookup.CALL, add_bos=False)
    out = tok.encode(lookup.value(key), add_bos=False)
    mask, i, calls = [], 0, 0
    while i < len(ids):
        mask.append(1)
        if ids[i] == call and calls < MAX_CALLS:
            calls += 1
            n = min(len(out), len(ids) - i - 1)
            assert ids[i + 1 : i + 1 + n] == out[:n], "the injected tokens are not the tool's"
            mask += [0] * n
            i += n
        i += 1
    return mask


@pytest.mark.slow
def test_hidden_lookup_learns_to_call_the_tool_and_copy_its_output(tmp_path):
    steps, _, wall = run_cli(EXAMPLE, tmp_path / "run")
    rewards = [r["reward_mean"] for r in steps]
    last10 = sum(rewards[-10:]) / 10
    print(
        f"chance {CHANCE:.4f} (no-tool best {NO_TOOL_BEST}); {learning_summary(steps, 0.8)}; "
        f"command wall {wall:.0f}s"
    )
    assert sum(rewards[:3]) / 3 < 0.05  # starts near chance
    assert first_step_reaching(steps, 0.8) is not None, [round(r, 2) for r in rewards]
    assert last10 >= 0.8 > NO_TOOL_BEST  # only the tool gets there

    tok = CharTokenizer("abcd=?")
    log = read_jsonl(tmp_path / "run" / "buffer-state" / "buffer.jsonl")
    groups = {e["group"]["group_id"]: e["group"] for e in log if e["t"] == "accept"}
    trained = [groups[g] for e in log if e["t"] == "serve" for g in e["group_ids"]]
    assert len(trained) == 32 * len(steps)
    masked = 0
    for group in trained:
        key = group["prompt"].rstrip("=")
        for s in group["samples"]:
            assert s["loss_mask"] == expected_mask(s["response_ids"], key, tok), s
            assert s["info"]["tool_outputs"] == [lookup.value(key)] * s["info"]["tool_calls"]
            assert all(
                lp == 0.0
                for lp, m in zip(s["response_logprobs"], s["loss_mask"], strict=True)
                if not m
            )
            assert s["reward"] == 0.0 or s["info"]["tool_calls"] >= 1
            masked += s["loss_mask"].count(0)
    late = [s for g in trained[-320:] for s in g["samples"]]
    assert sum(s["info"]["tool_calls"] >= 1 for s in late) / len(late) >= 0.8  # it calls
    assert masked > 0
