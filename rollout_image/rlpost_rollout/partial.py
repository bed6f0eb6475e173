"""Partial rollouts (`rollout.partialRollouts`): a /generate that a weight update aborts keeps
the tokens it made and is resumed on the new weights, instead of being generated again.

SGLang's abort answer (pause_generation mode "abort") carries what the request generated so
far: `output_ids`, `text` and, with return_logprob, `meta_info.output_token_logprobs`, with
finish_reason {"type": "abort"}. A request aborted before its prefill answers with none of
them ("Abort before prefill"): zero tokens. The resume request is the same request with
`input_ids` = prompt + every token kept so far, `max_new_tokens` = what is left of the
original, and the sampling seed of resume k `resume_seed(seed, k)` (a fresh, still seeded,
random stream: the same seed again would redraw the first segment's random numbers). Its
tokens, logprobs and text are appended; the sample records every weight version its tokens
came from (`weight_versions`). docs/CONTRACTS.md, "Partial rollouts".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Resume k's seed: a 64-bit odd constant (golden ratio) keeps the streams apart.
_SEED_STEP = 0x9E3779B97F4A7C15


def resume_seed(seed: int | None, k: int) -> int | None:
    """The sampling seed of a sample's k-th resume (k >= 1); None stays None (unseeded)."""
    if seed is None:
        return None
    return (seed + k * _SEED_STEP) % 2**63


def output_tokens(out: dict[str, Any]) -> tuple[list[int], list[float]]:
    """(token ids, their logprobs) of one /generate answer; an answer without
    output_token_logprobs (SGLang's "Abort before prefill") made none."""
    pairs = out.get("meta_info", {}).get("output_token_logprobs") or []
    ids = [int(t) for _, t, _ in pairs]
    lps = [float(lp) for lp, _, _ in pairs]
    return ids, lps


@dataclass
class Segments:
    """One router.generate call's answer assembled over its aborts and resumes."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    versions: list[int] = field(default_factory=list)  # per segment with tokens, in order
    resumes: int = 0

    def add(self, out: dict[str, Any], version: int) -> None:
        ids, lps = output_tokens(out)
        self.ids += ids
        self.logprobs += lps
        self.text += out.get("text") or ""
        if ids:
            self.versions.append(version)


def judged_version(samples: list[dict[str, Any]]) -> int:
    """The version the staleness floor judges a group on (its `weight_version`).

    A group none of whose samples was resumed: the oldest version any token came from (as
    without partial rollouts). A group with a resumed sample: the version that finished it
    (the newest any token came from), but at most one newer than its oldest token: a token
    trains at most maxStaleness + 1 steps after the weights that made it."""
    oldest = min(s["weight_version"] for s in samples)
    if not any(s.get("resumes") for s in samples):
        return oldest
    newest = max(v for s in samples for v in s.get("weight_versions", [s["weight_version"]]))
    return min(newest, oldest + 1)
