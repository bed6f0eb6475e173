"""Custom functions by Python path in the buffer: loading and checking them at start (one
loader for every extension point of `rlpost.extension_points`), and the pieces the driver
calls them with: the per-sample router helper of a custom generate, the group filters.

docs/CONTRACTS.md, "Custom functions", documents each signature.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rlpost.extension_points import REWARD, ExtensionPoint, spec_functions
from rlpost_rollout import partial

# ---------------------------------------------------------------------------- loading


def load_function(path: str, field: str = REWARD.field) -> Callable[..., Any]:
    """ "pkg.module:function" -> the function; a ValueError naming the field if it does not
    import or is not callable."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{field} {path!r}: cannot import {module_name!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{field} {path!r}: {module_name} has no function {attr!r}")
    return fn


def check_function(path: str, point: ExtensionPoint = REWARD) -> Callable[..., Any]:
    """Load a custom function and check it can be called as the extension point calls it (a
    ValueError says what is wrong): run at the start of every role that uses it."""
    fn = load_function(path, point.field)
    try:
        inspect.signature(fn).bind(*point.args)
    except TypeError as exc:
        raise ValueError(
            f"{point.field} {path!r} cannot be called as {point.call()}: {exc}"
        ) from exc
    except ValueError:
        pass  # no signature to read (a builtin): called as is
    if point.is_async and not _is_async(fn):
        raise ValueError(f"{point.field} {path!r} must be an async function ({point.call()})")
    return fn


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - a callable object's async __call__
    )


def check_spec_functions(spec) -> dict[str, tuple[str, Callable[..., Any]]]:
    """Every custom function the spec names, loaded and checked: {field: (where, function)},
    `where` ("algorithm.filter 'pkg.mod:fn'") naming it in the errors it causes later."""
    return {
        point.field: (f"{point.field} {path!r}", check_function(path, point))
        for point, path in spec_functions(spec)
    }


# ---------------------------------------------------------------------------- generate


class GenerateError(Exception):
    """A custom generate function failed or returned something unusable (the group is
    dropped as generate_error)."""


class PermanentGenerateError(Exception):
    """The engine refused the request (4xx): retrying would not help."""


class Aborted(Exception):
    """The engine aborted the request (weights being updated): draw the prompt again."""


class BudgetSpent(GenerateError):
    """A call beyond the sample's budget (rollout.agent: maxTurns, maxTokens)."""


@dataclass(frozen=True)
class SampleBudget:
    """One sample's budget (rollout.agent): /generate calls (turns) and response tokens
    (policy + injected). None: no limit."""

    max_turns: int | None = None
    max_tokens: int | None = None


def _version(reported: Any, fallback: int) -> int:
    """The engine's weight_version (a string in SGLang); ours are ints. An engine that reports
    none (SGLang's "default") gets the version the buffer knew when the group started."""
    try:
        return int(reported)
    except (TypeError, ValueError):
        return fallback


# driver._generate(input_ids, rid, sampling, routing_key) -> SGLang's /generate answer
RawGenerate = Callable[[list[int], str, dict[str, Any], str | None], Awaitable[dict[str, Any]]]


class SampleRouter:
    """What a custom generate function gets as `router`, one per sample: `await
    router.generate(input_ids, **overrides)` is one /generate call through the router (the
    buffer's retries, backoff and abort handling included) with the sample's sampling
    params, any of them overridden (max_new_tokens, temperature, top_p, top_k, stop,
    sampling_seed); it answers {"response_ids", "response_logprobs", "finish_reason", "text",
    "weight_version", "weight_versions"}. `encode(text)` / `decode(ids)`: the job's tokenizer
    (no BOS added). The sample's weight_version is the oldest any of its calls reported.

    Budget (`budget`, rollout.agent; `max_turns` / `max_tokens` / `turns_left` /
    `tokens_left(input_ids)` read it): a call beyond maxTurns, or with no response token left,
    raises BudgetSpent (the group is dropped as generate_error); each call's max_new_tokens is
    cut to the tokens left. The sample's response so far is what its calls generated or, when
    `input_ids` continue the prompt, everything after the prompt (injected tokens count).

    Partial rollouts (`partial`): an answer aborted by a weight update is resumed on the new
    weights within the same call (rlpost_rollout.partial) instead of raising Aborted; the
    answer's tokens then span versions (`weight_versions`); `resumes` lists, per resume, the
    tokens the aborted request had made.

    Every call carries the routing key `session` (default: the sample id, so one key per
    sample) as the X-SMG-Routing-Key header: with rollout.router.policy `manual` all turns of
    a multi-turn sample reach one engine (its prefix cache); other policies ignore it.
    `router.generate(ids, session="k")` sends another key for that call."""

    def __init__(
        self,
        raw: RawGenerate,
        rid: str,
        sampling: dict[str, Any],
        tokenizer,
        version,
        *,
        budget: SampleBudget | None = None,
        prompt_ids: list[int] | None = None,
        partial: bool = False,
        on_resume: Callable[[int], None] | None = None,
    ):
        self._raw, self._rid, self.sampling = raw, rid, dict(sampling)
        self._tokenizer = tokenizer
        self.version_at_start = version
        self.oldest_version = version
        self.budget = budget or SampleBudget()
        self.prompt_ids = list(prompt_ids) if prompt_ids is not None else None
        self.partial = partial
        self._on_resume = on_resume
        self.calls = 0
        self.generated = 0  # tokens the engines generated for this sample (kept ones)
        self.versions: set[int] = set()  # every version a kept token came from
        # Partial rollouts: per resume, the tokens the aborted request had made (kept).
        self.resumes: list[int] = []
        self.session = rid
        self.sessions: list[str] = []  # the routing key of each call, in order

    @property
    def max_turns(self) -> int | None:
        return self.budget.max_turns

    @property
    def max_tokens(self) -> int | None:
        return self.budget.max_tokens

    @property
    def turns_left(self) -> int | None:
        return None if self.max_turns is None else max(0, self.max_turns - self.calls)

    def tokens_left(self, input_ids: list[int] | None = None) -> int | None:
        """Response tokens left to the sample if the next call sends `input_ids`."""
        if self.max_tokens is None:
            return None
        used = self.generated
        p = self.prompt_ids
        if input_ids is not None and p is not None and list(input_ids[: len(p)]) == p:
            used = max(used, len(input_ids) - len(p))
        return max(0, self.max_tokens - used)

    async def generate(
        self, input_ids: list[int], session: str | None = None, **overrides: Any
    ) -> dict[str, Any]:
        unknown = set(overrides) - set(self.sampling) - {"top_p", "top_k"}
        if unknown:
            raise GenerateError(f"router.generate: unknown sampling params {sorted(unknown)}")
        if self.turns_left == 0:
            raise BudgetSpent(
                f"router.generate: the sample's budget is {self.max_turns} turns "
                "(rollout.agent.maxTurns); no call is left"
            )
        sampling = {**self.sampling, **overrides}
        left = self.tokens_left(input_ids)
        if left is not None:
            if left == 0:
                raise BudgetSpent(
                    f"router.generate: the sample's budget of {self.max_tokens} response "
                    "tokens (rollout.agent.maxTokens) is spent"
                )
            sampling["max_new_tokens"] = min(int(sampling.get("max_new_tokens") or left), left)
        self.calls += 1
        rid = self._rid if self.calls == 1 else f"{self._rid}-c{self.calls}"
        key = session or self.session
        self.sessions.append(key)
        got = partial.Segments()
        want, seed = int(sampling.get("max_new_tokens") or 0), sampling.get("sampling_seed")
        while True:
            call_rid = rid if got.resumes == 0 else f"{rid}-r{got.resumes}"
            out = await self._raw(list(input_ids) + got.ids, call_rid, sampling, key)
            meta = out["meta_info"]
            reported = _version(meta.get("weight_version"), self.version_at_start)
            got.add(out, reported)
            finish = meta["finish_reason"]["type"]
            if finish != "abort":
                break
            if not self.partial:
                raise Aborted(rid)
            if len(got.ids) >= want:
                finish = "length"  # it had made every token it was allowed
                break
            got.resumes += 1
            self.resumes.append(len(got.ids))
            if self._on_resume is not None:
                self._on_resume(len(got.ids))
            sampling = {
                **sampling,
                "max_new_tokens": want - len(got.ids),
                "sampling_seed": partial.resume_seed(seed, got.resumes),
            }
        versions = got.versions or [reported]
        # The oldest weights that can have made a token of it: also the buffer's live
        # version at the start (a request across an in-place update reports the new one).
        self.oldest_version = min(self.oldest_version, *versions)
        self.versions.update(versions)
        self.generated += len(got.ids)
        return {
            "response_ids": got.ids,
            "response_logprobs": got.logprobs,
            "finish_reason": finish,
            "text": got.text,
            "weight_version": reported,  # the engine's, for the last segment
            "weight_versions": sorted(set(versions)),  # one per segment with tokens
        }

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_bos=False))

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(list(ids))


async def custom_generate(fn, where: str, row, router: SampleRouter) -> dict[str, Any]:
    """One sample by the custom generate function, its answer checked."""
    try:
        out = await fn(row.prompt, list(row.prompt_ids), dict(router.sampling), router)
    except (GenerateError, Aborted, PermanentGenerateError):
        raise  # the driver's own: a weight update, an engine refusing
    except Exception as exc:
        raise GenerateError(f"{where} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, dict):
        raise GenerateError(f"{where} returned {type(out).__name__}, not a dict")
    ids, lps = out.get("response_ids"), out.get("response_logprobs")
    if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
        raise GenerateError(f"{where}: response_ids must be a list of token ids")
    if not isinstance(lps, list) or len(lps) != len(ids):
        raise GenerateError(
            f"{where}: response_logprobs must be a list with one logprob per response token "
            f"({len(ids)})"
        )
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in lps):
        raise GenerateError(f"{where}: response_logprobs must be finite numbers")
    if router.max_tokens is not None and len(ids) > router.max_tokens:
        raise GenerateError(
            f"{where}: {len(ids)} response tokens, over the sample's budget of "
            f"{router.max_tokens} (rollout.agent.maxTokens)"
        )
    if not isinstance(out.get("finish_reason"), str):
        raise GenerateError(f"{where}: finish_reason must be a string (stop, length)")
    mask = out.get("loss_mask")
    if mask is not None and (
        not isinstance(mask, list) or len(mask) != len(ids) or any(m not in (0, 1) for m in mask)
    ):
        raise GenerateError(
            f"{where}: loss_mask must be a list of 0/1, one per response token ({len(ids)})"
        )
    info = out.get("info")
    if info is not None and not isinstance(info, dict):
        raise GenerateError(f"{where}: info must be a dict (kept in the sample as is)")
    text = out.get("text")
    return {**out, "text": text if isinstance(text, str) else router.decode(ids)}


# ---------------------------------------------------------------------------- filters

# outcome labels of rlpost_samples_total the driver uses itself: a filter's reason is not one
RESERVED_OUTCOMES = {
    "accepted",
    "aborted",
    "overtaken",
    "generate_error",
    "reward_error",
    "stale_on_arrival",
    "filter_error",
}
GroupFilter = Callable[[dict[str, Any]], Any]


class FilterError(Exception):
    """A group filter raised or returned something that is not keep/drop."""


def zero_std(group: dict[str, Any]) -> tuple[bool, str]:
    """The built-in filter of algorithm.dynamicSampling: a group whose rewards all agree has
    no advantage to learn from."""
    rewards = [s["reward"] for s in group["samples"]]
    return statistics.pstdev(rewards) > 0.0, "zero_std"


def reason_label(reason: str) -> str:
    """A filter's reason as a metric label: [a-z0-9_], at most 40 characters, never one of
    the driver's own outcomes."""
    label = re.sub(r"[^a-z0-9_]+", "_", reason.lower()).strip("_")[:40] or "filtered"
    return f"filter_{label}"[:40] if label in RESERVED_OUTCOMES else label


async def apply_filters(filters: list[tuple[str, GroupFilter]], group: dict[str, Any]):
    """None when every filter keeps the group, else the first drop's reason label."""
    for where, fn in filters:
        try:
            verdict = fn(group)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception as exc:
            raise FilterError(f"{where} raised {type(exc).__name__}: {exc}") from exc
        keep, reason = verdict, "filtered"
        if isinstance(verdict, tuple) and len(verdict) == 2:
            keep, reason = verdict
        if not isinstance(keep, bool) or not isinstance(reason, str):
            raise FilterError(
                f"{where} returned {verdict!r}: expected True, False or (False, reason)"
            )
        if not keep:
            return reason_label(reason)
    return None
