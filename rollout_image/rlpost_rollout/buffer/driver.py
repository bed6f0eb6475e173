"""Rollout driver: draws prompts, generates groups through the router, scores, filters.

It keeps `rolloutBatchSize` groups ready (or in flight) for the next step the trainer will
ask for, and only generates while the live weight version can still serve that step
(version >= next_step - maxStaleness): synchronous runs wait for the new weights, async runs
(k > 0) generate step s+1 with version s while the trainer trains step s.
A sample is one /generate call, or what `rollout.generate` (a custom generate function)
makes of its calls. A group is accepted only when every sample generated and scored and the
group filters keep it: zero-std groups when dynamic sampling is on, then `algorithm.filter`;
a dropped group is counted under its reason and more prompts are drawn to refill.
`rollout.overSampling` keeps that many groups more in flight than the next step needs.
Aborted requests (weights being swapped): with `rollout.partialRollouts` each is resumed on
the new weights (rlpost_rollout.partial, in SampleRouter), else the group goes back to the
queue and is drawn again. A group overtaken by a served step while in flight (too stale on
arrival for the step now to come, though valid when drawn) is drawn again too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from rlpost_rollout.buffer.dataset import PromptSource
from rlpost_rollout.buffer.store import Store
from rlpost_rollout.extensions import (
    Aborted,
    FilterError,
    GenerateError,
    GroupFilter,
    PermanentGenerateError,
    SampleBudget,
    SampleRouter,
    apply_filters,
    custom_generate,
    zero_std,
)
from rlpost_rollout.partial import judged_version
from rlpost_rollout.protocol import generate_payload
from rlpost_rollout.rewards import RewardError, RewardFn

log = logging.getLogger("rlpost_rollout.buffer.driver")


def sample_seed(run_seed: int, prompt_index: int, j: int) -> int:
    """The sampling seed of sample j of the run's prompt `prompt_index`: fixed by the job's
    seed, so a run's rollouts do not depend on which engine served a request, nor on what
    else was in its batch (a re-drawn prompt gets the same seeds, with the new weights)."""
    return ((run_seed * 1_000_003 + prompt_index) * 4096 + j) % 2**63


@dataclass
class DriverConfig:
    router_url: str
    group_size: int
    batch_size: int
    max_staleness: int
    max_new_tokens: int
    temperature: float
    dynamic_sampling: bool
    max_inflight_groups: int
    stop: list[str] = field(default_factory=list)  # stop strings (rollout.stop)
    seed: int = 0  # spec.seed: sample j of prompt i is drawn with sample_seed(seed, i, j)
    over_sampling: int = 0  # groups in flight beyond what the next step needs
    partial_rollouts: bool = False  # resume aborted requests on the new weights
    budget: SampleBudget = field(default_factory=SampleBudget)  # rollout.agent, per sample
    request_timeout_s: float = 300.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0


class Driver:
    def __init__(
        self,
        cfg: DriverConfig,
        store: Store,
        source: PromptSource,
        reward: RewardFn,
        tokenizer,
        metrics,
        generate: tuple[str, Any] | None = None,
        group_filter: tuple[str, GroupFilter] | None = None,
    ):
        """`generate`, `group_filter`: (where, function) of rollout.generate and
        algorithm.filter, already checked (rlpost_rollout.extensions.check_function)."""
        self.cfg = cfg
        self.custom_generate = generate
        # Dynamic sampling is the built-in filter; it runs before the custom one.
        self.filters: list[tuple[str, GroupFilter]] = []
        if cfg.dynamic_sampling:
            self.filters.append(("dynamicSampling", zero_std))
        if group_filter:
            self.filters.append(group_filter)
        self.store = store
        self.source = source
        self.reward = reward
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.inflight: dict[str, asyncio.Task] = {}
        self.requeued: list[int] = store.state.unsettled()
        self.wake = asyncio.Event()
        self.changed = asyncio.Event()  # set whenever a group settles (batch waiters listen)
        self.errors: dict[str, str] = {}  # cause -> last message (for /health)
        self.router_ok: bool | None = None
        # aiohttp, not httpx, on this path: a step sends groupSize x rolloutBatchSize
        # concurrent requests, and under httpx the buffer spent most of its CPU in httpcore's
        # connection pool (py-spy; docs/benchmarks.md, "Rollout client"). Made in the running
        # loop, at the first request.
        self.http: aiohttp.ClientSession | None = None
        self.scored_rewards: list[float] = []
        # Consecutive groups lost to a systematic cause (rewards failing, engines refusing,
        # stale weights): the driver backs off instead of burning the engines in a loop.
        self.fail_streak = 0
        self._stopped = False
        if self.requeued:
            log.info(
                "re-drawing prompts that were in flight at the last stop",
                extra={"prompt_indices": self.requeued[:20], "count": len(self.requeued)},
            )

    # ------------------------------------------------------------------ scheduling

    def valid_ready(self, step: int) -> int:
        s = self.store.state
        floor = step - self.cfg.max_staleness
        return sum(1 for g in s.ready if s.groups[g]["weight_version"] >= floor)

    def wanted(self) -> int:
        s = self.store.state
        step = s.next_step
        if s.version < step - self.cfg.max_staleness:
            return 0  # anything made now would be too stale for the next step
        target = self.cfg.batch_size + self.cfg.over_sampling
        missing = target - self.valid_ready(step) - len(self.inflight)
        cap = self.cfg.max_inflight_groups + self.cfg.over_sampling
        return max(0, min(missing, cap - len(self.inflight)))

    def kick(self) -> None:
        self.wake.set()

    async def run(self) -> None:
        while not self._stopped:
            if self.fail_streak:
                await asyncio.sleep(min(0.1 * 2 ** min(self.fail_streak, 7), 10.0))
            for _ in range(self.wanted()):
                index = self._draw()
                gid = f"g{index}-{uuid.uuid4().hex[:8]}"
                task = asyncio.create_task(self._group(index, gid), name=gid)
                self.inflight[gid] = task
                task.add_done_callback(self._done)
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=1.0)

    def _draw(self) -> int:
        if self.requeued:
            return self.requeued.pop(0)
        s = self.store.state
        index = s.cursor
        s.cursor += 1  # not durable by itself: unsettled indices are re-drawn after a crash
        return index

    def _done(self, task: asyncio.Task) -> None:
        self.inflight.pop(task.get_name(), None)
        if not task.cancelled() and task.exception() is not None:
            log.error("group task crashed", exc_info=task.exception())
        self.changed.set()
        self.kick()

    async def stop(self) -> None:
        self._stopped = True
        for t in list(self.inflight.values()):
            t.cancel()
        await asyncio.gather(*self.inflight.values(), return_exceptions=True)
        if self.http is not None:
            await self.http.close()

    # ------------------------------------------------------------------ one group

    async def _group(self, index: int, gid: str) -> None:
        row = self.source.get(index)
        version_at_start = self.store.state.version
        floor_at_start = self.store.state.next_step - self.cfg.max_staleness
        routers = [
            SampleRouter(
                self._generate,
                f"{gid}-{j}",
                self._sampling(sample_seed(self.cfg.seed, index, j)),
                self.tokenizer,
                version_at_start,
                budget=self.cfg.budget,
                prompt_ids=list(row.prompt_ids),
                partial=self.cfg.partial_rollouts,
                on_resume=self._resumed,
            )
            for j in range(self.cfg.group_size)
        ]
        try:
            outs = await asyncio.gather(*(self._sample(row, r) for r in routers))
        except Aborted:
            self.metrics.samples.labels(outcome="aborted").inc(self.cfg.group_size)
            self.requeued.append(index)
            return
        except (PermanentGenerateError, GenerateError) as exc:  # engine 4xx, custom function
            self.fail_streak += 1
            self._record_error("generate", f"{row.where}: {exc}")
            self._drop(index, gid, "generate_error", [str(exc)])
            return
        samples, errors = [], []
        for j, (out, router) in enumerate(zip(outs, routers, strict=True)):
            response_ids = list(out["response_ids"])
            sample: dict[str, Any] = {
                "sample_id": f"{gid}-{j}",
                "prompt_ids": list(row.prompt_ids),
                "response_ids": response_ids,
                "response": self.tokenizer.decode(response_ids),
                "response_logprobs": list(out["response_logprobs"]),
                "finish_reason": out["finish_reason"],
                # The oldest weights that can have produced a token of it: a request in
                # flight across an in-place update (async runs) finishes on the new weights
                # and reports their version, but began on the old ones.
                "weight_version": router.oldest_version,
                # Every version its tokens came from: more than one when a weight update
                # aborted it and it was resumed (partial rollouts).
                "weight_versions": sorted(router.versions | {router.oldest_version}),
            }
            if router.resumes:  # per resume, the tokens it kept from the aborted request
                sample["resumes"] = list(router.resumes)
            if out.get("loss_mask") is not None:  # 0: injected (tool output), not trained
                sample["loss_mask"] = [int(m) for m in out["loss_mask"]]
            if out.get("info") is not None:  # the custom generate's own record (tool calls)
                sample["info"] = out["info"]
            samples.append(sample)
        # The group's samples are scored at once (a reward pool runs them in parallel), each
        # under its sample id (the pool scores an id once).
        scored = await asyncio.gather(
            *(
                self.reward(row.prompt, out["text"], row.label, key=x["sample_id"])
                for x, out in zip(samples, outs, strict=True)
            ),
            return_exceptions=True,
        )
        for sample, result in zip(samples, scored, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, RewardError):
                raise result
            if not isinstance(result, RewardError):
                sample["reward"] = result
                self.scored_rewards.append(result)
                continue
            sample["failed"], sample["error"] = True, str(result)
            errors.append(f"{sample['sample_id']}: {result}")
            self.metrics.reward_errors.inc()
            log.error(
                "reward failed",
                extra={"sample_id": sample["sample_id"], "where": row.where, "error": str(result)},
            )
        if errors:
            self.fail_streak += 1
            self._record_error("reward", errors[-1])
            self._drop(index, gid, "reward_error", errors)
            return
        version = judged_version(samples)  # the oldest, or what finished a resumed group
        floor = self.store.state.next_step - self.cfg.max_staleness
        if floor_at_start <= version < floor:
            # Valid when drawn, overtaken by a step served while it was in flight (e.g. an
            # over-sampled group finishing during training): its prompt is drawn again.
            self.metrics.samples.labels(outcome="overtaken").inc(len(samples))
            self.requeued.append(index)
            return
        if version < floor:
            # Made with weights too old for any step still to come (in flight across a weight
            # update, or engines that never received the update): useless, dropped and counted.
            self.fail_streak += 1
            self._record_error(
                "staleness",
                f"engine answered with weight_version {version} but step "
                f"{self.store.state.next_step} needs >= {floor} (maxStaleness "
                f"{self.cfg.max_staleness}); {self.fail_streak} failed groups in a row - are "
                "weight updates reaching the engines?",
            )
            self._drop(index, gid, "stale_on_arrival", [])
            return
        self.errors.pop("staleness", None)
        group = {
            "group_id": gid,
            "prompt_index": index,
            "prompt": row.prompt,
            "label": row.label,
            "weight_version": version,
            "oldest_weight_version": min(x["weight_version"] for x in samples),
            "samples": samples,
            "accepted_at": time.time(),
        }
        try:
            reason = await apply_filters(self.filters, group)
        except FilterError as exc:
            self.fail_streak += 1
            self._record_error("filter", f"{row.where}: {exc}")
            self._drop(index, gid, "filter_error", [str(exc)])
            return
        self.fail_streak = 0
        if reason is not None:
            self._drop(index, gid, reason, [])
            return
        self.store.append({"t": "accept", "group": group})
        self.metrics.samples.labels(outcome="accepted").inc(len(samples))
        self.metrics.depth.set(len(self.store.state.ready))

    def _drop(self, index: int, gid: str, reason: str, errors: list[str]) -> None:
        self.store.append(
            {
                "t": "drop",
                "prompt_index": index,
                "group_id": gid,
                "reason": reason,
                "errors": errors[:8],
            }
        )
        self.metrics.samples.labels(outcome=reason).inc(self.cfg.group_size)

    def _resumed(self, kept_tokens: int) -> None:
        """A request aborted by a weight update is resumed (partial rollouts)."""
        self.metrics.resumed_requests.inc()
        self.metrics.resumed_tokens.inc(kept_tokens)

    def _record_error(self, cause: str, message: str) -> None:
        self.errors[cause] = message

    def _sampling(self, seed: int) -> dict[str, Any]:
        """One sample's sampling params (generate_payload's keywords)."""
        return {
            "max_new_tokens": self.cfg.max_new_tokens,
            "temperature": self.cfg.temperature,
            "stop": self.cfg.stop or None,
            "sampling_seed": seed,
        }

    async def _sample(self, row, router: SampleRouter) -> dict[str, Any]:
        if self.custom_generate is None:
            return await router.generate(list(row.prompt_ids))  # the default: one call
        where, fn = self.custom_generate
        return await custom_generate(fn, where, row, router)

    async def _generate(
        self,
        prompt_ids: list[int],
        rid: str,
        sampling: dict[str, Any],
        routing_key: str | None = None,
    ) -> dict[str, Any]:
        """One /generate call through the router (retries and backoff), with the sample's
        routing key (X-SMG-Routing-Key: sticky under policy `manual`). An aborted answer is
        returned as is: SampleRouter resumes it or raises Aborted."""
        body = generate_payload(prompt_ids, rid=rid, **sampling)
        headers = {"X-SMG-Routing-Key": routing_key} if routing_key else None
        url = f"{self.cfg.router_url}/generate"
        delay, attempt = self.cfg.backoff_initial_s, 0
        if self.http is None:
            self.http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.request_timeout_s),
                connector=aiohttp.TCPConnector(limit=0),  # as many as the groups in flight
            )
        while True:
            attempt += 1
            try:
                async with self.http.post(url, json=body, headers=headers) as r:
                    status, text = r.status, await r.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"router {self.cfg.router_url} unreachable: {type(exc).__name__}: {exc}"
            else:
                if status == 200:
                    out = json.loads(text)
                    if self.router_ok is False:
                        log.info("router reachable again", extra={"router": self.cfg.router_url})
                    self.router_ok = True
                    self.errors.pop("router", None)
                    return out
                if 400 <= status < 500 and status not in (408, 429):
                    raise PermanentGenerateError(f"HTTP {status}: {text[:300]}")
                problem = f"router {self.cfg.router_url} answered HTTP {status}: {text[:200]}"
            self.router_ok = False
            self.errors["router"] = problem
            self.metrics.generate_errors.inc()
            if attempt == 1 or attempt % 10 == 0:
                log.error(
                    "generate failed; retrying with backoff",
                    extra={"rid": rid, "attempt": attempt, "retry_in_s": delay, "error": problem},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.cfg.backoff_max_s)
