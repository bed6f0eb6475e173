"""The reward pool: custom and code_exec rewards as Ray tasks on the job's own Ray cluster
(`rewards.pool.workers` > 0; `rlpost run --reward-workers N` starts it locally, the buffer
finds it at RLPOST_RAY_ADDRESS).

- Bounded in-flight: at most `max_in_flight` tasks at once (a semaphore in the buffer).
- Per-task timeout: a task still running after `timeout_s` is cancelled (its worker is
  killed: a hung reward does not hold a CPU) and the sample fails with a RewardError.
- Retries on worker loss: Ray re-runs a task whose worker process (or node) died, up to
  `max_retries` times; an exception the reward raises is not retried (it would raise again).
- Idempotent per sample id: a keyed store of scores. A sample id that was scored returns its
  stored score; one being scored waits for that result. However often a task is re-run, a
  sample gets one score, recorded once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import OrderedDict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rlpost.api import RewardSpec, RewardType

log = logging.getLogger("rlpost_rollout.rewards.pool")

POOLED = (RewardType.CUSTOM, RewardType.CODE_EXEC)
_worker_fns: dict[str, Any] = {}  # per Ray worker process: spec JSON -> reward function


def _reward_in_worker(spec_json: str, prompt: str, response: str, label: Any) -> float:
    """Runs in a Ray worker: the reward function, loaded once per process."""
    fn = _worker_fns.get(spec_json)
    if fn is None:
        from rlpost_rollout.rewards.base import check_function, code_exec_fn

        spec = RewardSpec.model_validate_json(spec_json)
        if spec.type == RewardType.CODE_EXEC:
            fn = code_exec_fn(spec)
        else:
            fn = check_function(spec.function or "")
        _worker_fns[spec_json] = fn
    value = fn(prompt, response, label)
    if inspect.isawaitable(value):
        value = asyncio.run(_await(value))
    return value


async def _await(value):
    return await value


def connect(address: str, timeout_s: float = 120.0) -> None:
    """ray.init(address) as a driver, retried while the head starts."""
    import ray

    if ray.is_initialized():
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
            return
        except (ConnectionError, RuntimeError) as exc:
            if time.monotonic() > deadline:
                raise ConnectionError(f"no Ray cluster at {address}: {exc}") from exc
            time.sleep(1.0)


class PoolMetrics:
    def __init__(self, job: str, registry: CollectorRegistry | None = None):
        r = registry or CollectorRegistry()
        self.tasks = Counter(
            "rlpost_reward_pool_tasks",
            "reward pool results by outcome (ok, error, timeout, lost, cached)",
            ["job", "outcome"],
            registry=r,
        )
        self.inflight = Gauge(
            "rlpost_reward_pool_inflight", "reward tasks in flight", ["job"], registry=r
        ).labels(job)
        self.seconds = Histogram(
            "rlpost_reward_pool_task_seconds",
            "reward task latency, submit to result",
            ["job"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        ).labels(job)
        self.job = job

    def outcome(self, outcome: str) -> None:
        self.tasks.labels(job=self.job, outcome=outcome).inc()


class RewardPool:
    """`await pool.score(sample_id, prompt, response, label)` -> float, on Ray."""

    def __init__(
        self,
        spec: RewardSpec,
        *,
        max_in_flight: int,
        timeout_s: float,
        max_retries: int = 3,
        metrics: PoolMetrics | None = None,
        keep_scores: int = 200_000,
    ):
        import ray

        if spec.type not in POOLED:
            raise ValueError(f"reward type {spec.type} does not run in the pool")
        self.spec_json = spec.model_dump_json()
        self.timeout_s = timeout_s
        self.sem = asyncio.Semaphore(max_in_flight)
        self.metrics = metrics or PoolMetrics("")
        self.keep_scores = keep_scores
        self.scores: OrderedDict[str, float] = OrderedDict()  # sample id -> its one score
        self.pending: dict[str, asyncio.Future] = {}
        self._task = ray.remote(_reward_in_worker).options(
            num_cpus=1, max_retries=max_retries, retry_exceptions=False
        )

    async def score(self, sample_id: str, prompt: str, response: str, label: Any) -> float:
        if sample_id in self.scores:
            self.metrics.outcome("cached")
            return self.scores[sample_id]
        if sample_id in self.pending:
            self.metrics.outcome("cached")
            return await asyncio.shield(self.pending[sample_id])
        fut = asyncio.get_running_loop().create_future()
        self.pending[sample_id] = fut
        try:
            value = await self._run(prompt, response, label)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self.pending.pop(sample_id, None)
        self._record(sample_id, value)
        fut.set_result(value)
        return value

    def _record(self, sample_id: str, value: float) -> None:
        if sample_id in self.scores:  # never twice (a racing duplicate keeps the first)
            return
        self.scores[sample_id] = value
        while len(self.scores) > self.keep_scores:
            self.scores.popitem(last=False)

    async def _run(self, prompt: str, response: str, label: Any) -> float:
        import ray
        from ray.exceptions import RayTaskError

        from rlpost_rollout.rewards.base import RewardError, _checked

        async with self.sem:
            self.metrics.inflight.inc()
            started = time.monotonic()
            ref = self._task.remote(self.spec_json, prompt, response, label)
            try:
                value = await asyncio.wait_for(_as_future(ref), self.timeout_s)
            except TimeoutError as exc:
                ray.cancel(ref, force=True)
                self.metrics.outcome("timeout")
                raise RewardError(f"reward pool task timed out after {self.timeout_s}s") from exc
            except RayTaskError as exc:
                self.metrics.outcome("error")
                cause = exc.cause if exc.cause is not None else exc
                raise RewardError(f"reward raised {type(cause).__name__}: {cause}") from exc
            except ray.exceptions.RayError as exc:  # workers lost past max_retries, cancelled
                self.metrics.outcome("lost")
                raise RewardError(f"reward pool: {type(exc).__name__}: {exc}") from exc
            finally:
                self.metrics.inflight.dec()
                self.metrics.seconds.observe(time.monotonic() - started)
        self.metrics.outcome("ok")
        return _checked(value, "reward (pool)")


def _as_future(ref) -> asyncio.Future:
    return asyncio.wrap_future(ref.future())
