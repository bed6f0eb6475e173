"""The buffer's HTTP API (docs/CONTRACTS.md "Buffer API"): batches, versions, resume, records."""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from rlpost_rollout.auth import require_token
from rlpost_rollout.buffer.driver import Driver
from rlpost_rollout.buffer.store import Store
from rlpost_rollout.metrics import metrics_response

log = logging.getLogger("rlpost_rollout.buffer")


class VersionBody(BaseModel):
    version: int = Field(ge=0)


class ResumeBody(BaseModel):
    step: int = Field(ge=0)
    cursor: int | None = Field(default=None, ge=0)


class EvalBody(BaseModel):
    step: int = Field(ge=0)


class Buffer:
    """Serving rules on top of the store; the driver fills it."""

    def __init__(
        self,
        store: Store,
        driver: Driver,
        batch_size: int,
        max_staleness: int,
        metrics,
        rejected_rows: list,
        batch_timeout_s: float,
    ):
        self.store = store
        self.driver = driver
        self.batch_size = batch_size
        self.max_staleness = max_staleness
        self.metrics = metrics
        self.rejected_rows = rejected_rows
        self.batch_timeout_s = batch_timeout_s
        self.serving = asyncio.Lock()
        self.evaluator = None  # spec.eval's (buffer/evaluation.py), set by build()

    @property
    def state(self):
        return self.store.state

    def batch_body(self, step: int) -> dict[str, Any]:
        served = self.state.batches[step]
        return {"step": step, "groups": [self.state.groups[g] for g in served.group_ids]}

    async def batch(self, step: int, timeout_s: float) -> dict[str, Any]:
        async with self.serving:
            s = self.state
            if step in s.batches:
                return self.batch_body(step)  # idempotent: a retried step gets the same groups
            if step != s.next_step:
                raise HTTPException(
                    409,
                    f"step {step} cannot be served: the next step is {s.next_step} "
                    f"(served: {sorted(s.batches)[-3:]}, resume step {s.resume_step})",
                )
            deadline = time.monotonic() + timeout_s
            while True:
                floor = step - self.max_staleness
                valid = [g for g in s.ready if s.groups[g]["weight_version"] >= floor]
                if len(valid) >= self.batch_size:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HTTPException(504, self.not_ready_message(step, len(valid), timeout_s))
                self.driver.changed.clear()
                self.driver.kick()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.driver.changed.wait(), timeout=min(left, 1.0))
            # The earliest-drawn prompts first (not the first to finish): a step's batch
            # does not depend on which engine was faster, so a seeded run reproduces.
            valid.sort(key=lambda g: s.groups[g]["prompt_index"])
            chosen = valid[: self.batch_size]
            stale = [
                {"group_id": g, "weight_version": s.groups[g]["weight_version"]}
                for g in s.ready
                if s.groups[g]["weight_version"] < floor
            ]
            self.store.append(
                {
                    "t": "serve",
                    "step": step,
                    "cursor": s.cursor,
                    "group_ids": chosen,
                    "stale": stale,
                }
            )
            self.account(step, chosen, stale)
            self.driver.kick()
            return self.batch_body(step)

    def account(self, step: int, chosen: list[str], stale: list[dict[str, Any]]) -> None:
        m = self.metrics
        for g in chosen:
            group = self.state.groups[g]
            m.staleness.observe(step - group["weight_version"])
            m.samples.labels(outcome="served").inc(len(group["samples"]))
        if stale:
            m.samples.labels(outcome="stale").inc(
                sum(len(self.state.groups[x["group_id"]]["samples"]) for x in stale)
            )
            log.warning("discarded stale groups", extra={"step": step, "groups": len(stale)})
        scored = self.driver.scored_rewards
        if scored:
            m.reward_mean.set(statistics.fmean(scored))
            scored.clear()
        m.depth.set(len(self.state.ready))
        m.step.set(step)
        log.info(
            "batch served",
            extra={"step": step, "groups": len(chosen), "ready_left": len(self.state.ready)},
        )

    def not_ready_message(self, step: int, have: int, timeout_s: float) -> str:
        s = self.state
        errors = "; ".join(f"{k}: {v}" for k, v in self.driver.errors.items()) or "none"
        waiting = ""
        if s.version < step - self.max_staleness:
            waiting = (
                f" Waiting for weight version >= {step - self.max_staleness} "
                f"(POST /weight_version; live is {s.version})."
            )
        return (
            f"batch for step {step} not ready after {timeout_s:.0f}s: {have}/{self.batch_size} "
            f"groups valid (maxStaleness {self.max_staleness}), {len(self.driver.inflight)} in "
            f"flight, dropped so far {s.drops}.{waiting} Last errors: {errors}"
        )

    def resume(self, step: int, cursor: int | None) -> dict[str, Any]:
        s = self.state
        if cursor is None:
            if step not in s.step_start_cursor:
                raise HTTPException(
                    409, f"no cursor recorded for step {step}; pass one (from the checkpoint)"
                )
            cursor = s.step_start_cursor[step]
        rewound = list(s.ready) + [
            g for st, b in s.batches.items() if st >= step for g in b.group_ids
        ]
        for task in list(self.driver.inflight.values()):
            task.cancel()  # made for a timeline that no longer exists
        self.driver.requeued.clear()
        self.store.append({"t": "resume", "step": step, "cursor": cursor})
        n = sum(len(s.groups[g]["samples"]) for g in rewound)
        self.metrics.samples.labels(outcome="rewound").inc(n)
        self.metrics.depth.set(0)
        log.info("resumed", extra={"step": step, "cursor": cursor, "rewound_groups": len(rewound)})
        self.driver.kick()
        return {"step": step, "cursor": cursor}

    def health(self) -> dict[str, Any]:
        errors = [f"{k}: {v}" for k, v in self.driver.errors.items()]
        if self.rejected_rows:
            errors.append(
                f"dataset: {len(self.rejected_rows)} rows rejected "
                f"(first: {self.rejected_rows[0].where}: {self.rejected_rows[0].reason})"
            )
        return {
            "status": "degraded" if self.driver.errors else "ok",
            "errors": errors,
            "router_ok": self.driver.router_ok,
            "weight_version": self.state.version,
            "cursor": self.state.cursor,
            "ready_groups": len(self.state.ready),
            "next_step": self.state.next_step,
        }


def create_app(buffer: Buffer, token: str | None) -> FastAPI:
    driver = buffer.driver

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        task = asyncio.create_task(driver.run())
        yield
        await driver.stop()
        task.cancel()
        buffer.store.close()

    app = FastAPI(title="rlpost buffer", lifespan=lifespan)
    auth = [Depends(require_token(token))]

    @app.get("/health")
    async def health():
        return buffer.health()

    @app.get("/ready")
    async def ready():
        body = buffer.health()
        return JSONResponse(body, status_code=200 if driver.router_ok is not False else 503)

    @app.get("/metrics")
    async def metrics():
        return metrics_response(buffer.metrics.registry)

    @app.get("/batch", dependencies=auth)
    async def batch(step: int, timeout_s: float | None = None):
        return await buffer.batch(
            step, timeout_s if timeout_s is not None else buffer.batch_timeout_s
        )

    @app.post("/weight_version", dependencies=auth)
    async def weight_version(body: VersionBody):
        s = buffer.state
        if body.version < s.version:
            raise HTTPException(
                409, f"weight version {body.version} is older than live {s.version}"
            )
        if body.version > s.version:
            buffer.store.append({"t": "version", "version": body.version})
            buffer.metrics.weight_version.set(body.version)
            log.info("weight version live", extra={"version": body.version})
            driver.kick()
        return {"version": s.version}

    @app.post("/eval", dependencies=auth)
    async def evaluate(body: EvalBody):
        if buffer.evaluator is None:
            raise HTTPException(404, "this job has no spec.eval: nothing to evaluate")
        return await buffer.evaluator.run(body.step)

    @app.get("/checkpoint", dependencies=auth)
    async def checkpoint(step: int):
        cursors = buffer.state.step_start_cursor
        if step not in cursors:
            raise HTTPException(
                404, f"no cursor recorded for step {step} (steps: {sorted(cursors)[-5:]})"
            )
        return {"step": step, "cursor": cursors[step]}

    @app.post("/resume", dependencies=auth)
    async def resume(body: ResumeBody):
        async with buffer.serving:
            return buffer.resume(body.step, body.cursor)

    @app.get("/records", dependencies=auth)
    async def records():
        s = buffer.state
        steps = []
        for step in sorted(s.batches):
            b = s.batches[step]
            steps.append(
                {
                    "step": step,
                    "cursor": b.cursor,
                    "groups": [
                        {
                            "group_id": g,
                            "weight_version": s.groups[g]["weight_version"],
                            "prompt_index": s.groups[g]["prompt_index"],
                            "sample_ids": [x["sample_id"] for x in s.groups[g]["samples"]],
                        }
                        for g in b.group_ids
                    ],
                }
            )
        return {"steps": steps, "discarded_stale": s.stale, "resumes": s.resumes}

    @app.get("/stats", dependencies=auth)
    async def stats():
        s = buffer.state
        return {
            "accepted_groups": len(s.groups),
            "ready_groups": len(s.ready),
            "ready_group_ids": list(s.ready),
            "dropped_groups": s.drops,
            "rejected_rows": [{"where": r.where, "reason": r.reason} for r in buffer.rejected_rows],
            "reward_errors": buffer.metrics.reward_errors._value.get(),
            "generate_errors": buffer.metrics.generate_errors._value.get(),
            "inflight_groups": len(driver.inflight),
            "cursor": s.cursor,
            "weight_version": s.version,
            "next_step": s.next_step,
            "errors": driver.errors,
        }

    return app


def batch_timeout_default() -> float:
    return float(os.environ.get("RLPOST_BATCH_TIMEOUT_S", "900"))
