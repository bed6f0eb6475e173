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
from typing import Any

from rlpost.extension_points import REWARD, ExtensionPoint, spec_functions

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
    "weight_version"}. `encode(text)` / `decode(ids)`: the job's tokenizer (no BOS added).
    The sample's weight_version is the oldest any of its calls reported.

    Every call carries the routing key `session` (default: the sample id, so one key per
    sample) as the X-SMG-Routing-Key header: with rollout.router.policy `manual` all turns of
    a multi-turn sample reach one engine (its prefix cache); other policies ignore it.
    `router.generate(ids, session="k")` sends another key for that call."""

    def __init__(self, raw: RawGenerate, rid: str, sampling: dict[str, Any], tokenizer, version):
        self._raw, self._rid, self.sampling = raw, rid, dict(sampling)
        self._tokenizer = tokenizer
        self.version_at_start = version
        self.oldest_version = version
        self.calls = 0
        self.session = rid
        self.sessions: list[str] = []  # the routing key of each call, in order

    async def generate(
        self, input_ids: list[int], session: str | None = None, **overrides: Any
    ) -> dict[str, Any]:
        unknown = set(overrides) - set(self.sampling) - {"top_p", "top_k"}
        if unknown:
            raise GenerateError(f"router.generate: unknown sampling params {sorted(unknown)}")
        self.calls += 1
        rid = self._rid if self.calls == 1 else f"{self._rid}-c{self.calls}"
        key = session or self.session
        self.sessions.append(key)
        out = await self._raw(list(input_ids), rid, {**self.sampling, **overrides}, key)
        meta = out["meta_info"]
        version = _version(meta.get("weight_version"), self.version_at_start)
        self.oldest_version = min(self.oldest_version, version)
        return {
            "response_ids": list(
                out.get("output_ids") or [t for _, t, _ in meta["output_token_logprobs"]]
            ),
            "response_logprobs": [lp for lp, _, _ in meta["output_token_logprobs"]],
            "finish_reason": meta["finish_reason"]["type"],
            "text": out.get("text", ""),
            "weight_version": version,
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
