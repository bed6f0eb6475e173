"""Turning `spec.reward` into one async reward callable with uniform error handling."""

from __future__ import annotations

import asyncio
import inspect
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from rlpost.api import RewardSpec, RewardType
from rlpost_rollout.extensions import check_function, load_function
from rlpost_rollout.rewards.builtin import exact_match, math_answer_async

# The one loader of custom functions (every extension point); re-exported for the reward pool.
__all__ = ["RewardError", "RewardFn", "check_function", "load_function", "make_reward"]

# reward(prompt, response, label, key=sample_id) -> float; `key` lets a reward pool score each
# sample once however often its task is retried (the in-process rewards ignore it).
RewardFn = Callable[..., Awaitable[float]]


class RewardError(Exception):
    """A reward could not be computed for one sample (the sample is marked failed)."""


def code_exec_fn(spec: RewardSpec) -> Callable[[str, str, Any], float]:
    """The code_exec reward with the spec's sandbox limits (blocking: a thread or a task)."""
    from rlpost_rollout.rewards import code_exec

    sb = spec.sandbox
    limits = code_exec.Limits(
        cpu_s=sb.cpu_seconds,
        memory_mb=sb.memory_mb,
        wall_s=sb.wall_seconds,
        max_processes=sb.max_processes,
    )

    def reward(prompt: str, response: str, label: Any) -> float:
        return code_exec.score(response, label, limits, prompt)

    return reward


def _checked(value: Any, where: str) -> float:
    try:
        reward = float(value)
    except (TypeError, ValueError) as exc:
        raise RewardError(f"{where} returned {value!r}, not a number") from exc
    if not math.isfinite(reward):
        raise RewardError(f"{where} returned {reward}, not a finite number")
    return reward


def make_reward(spec: RewardSpec, pool: Any = None) -> RewardFn:
    """`pool` (a rewards.pool.RewardPool): custom and code_exec rewards run there."""
    timeout = spec.timeout_seconds
    if pool is not None:

        async def pooled(prompt: str, response: str, label: Any, key: str | None = None):
            return await pool.score(key or uuid.uuid4().hex, prompt, response, label)

        return pooled
    if spec.type == RewardType.REMOTE:
        return _remote(spec.url or "", timeout)
    if spec.type == RewardType.CUSTOM:
        fn, where = check_function(spec.function or ""), f"reward {spec.function}"
    elif spec.type == RewardType.CODE_EXEC:
        fn, where = code_exec_fn(spec), "reward code_exec"
    elif spec.type == RewardType.MATH:
        fn, where = math_answer_async, "reward math"
    else:
        fn, where = exact_match, "reward exact_match"

    async def call(prompt: str, response: str, label: Any, key: str | None = None) -> float:
        try:
            if inspect.iscoroutinefunction(fn):
                value = await asyncio.wait_for(fn(prompt, response, label), timeout)
            else:
                # A thread, so a slow custom function cannot stall the driver; the timeout
                # makes a hung one a failed sample instead of a hung run.
                value = await asyncio.wait_for(
                    asyncio.to_thread(fn, prompt, response, label), timeout
                )
        except TimeoutError as exc:
            raise RewardError(f"{where} timed out after {timeout}s") from exc
        except RewardError:
            raise
        except Exception as exc:
            raise RewardError(f"{where} raised {type(exc).__name__}: {exc}") from exc
        return _checked(value, where)

    return call


def _remote(url: str, timeout: float) -> RewardFn:
    """POST {"prompt", "response", "label"} -> {"reward": float}."""
    client = httpx.AsyncClient(timeout=timeout)

    async def call(prompt: str, response: str, label: Any, key: str | None = None) -> float:
        where = f"remote reward {url}"
        try:
            r = await client.post(
                url, json={"prompt": prompt, "response": response, "label": label}
            )
        except httpx.TimeoutException as exc:
            raise RewardError(f"{where} timed out after {timeout}s") from exc
        except httpx.HTTPError as exc:
            raise RewardError(f"{where} unreachable: {type(exc).__name__}: {exc}") from exc
        if r.status_code != 200:
            raise RewardError(f"{where} answered HTTP {r.status_code}: {r.text[:200]}")
        try:
            body = r.json()
        except ValueError as exc:
            raise RewardError(f"{where} answered non-JSON: {r.text[:200]}") from exc
        if not isinstance(body, dict) or "reward" not in body:
            raise RewardError(f"{where} answered {str(body)[:200]} without a 'reward' field")
        return _checked(body["reward"], where)

    return call
