"""The engine's batching loop: concurrent /generate calls are served together.

HTTP handlers submit requests and await a future; one worker thread (torch is not
async) takes everything waiting, up to `max_batch`, and runs it as one batch. While a batch
runs, new arrivals queue for the next one. `model_lock` is held for a whole batch, so a
weight update (which takes the same lock) lands between batches, never inside one; pausing
stops new batches from starting, and `mode="abort"` ends the running one early: its requests
answer with the tokens made so far (finish_reason abort), as SGLang's do. A request aborted
before its batch started answers with none ("Abort before prefill", as SGLang).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass

from rlpost_rollout.generator import Generator, GenRequest, GenResult

log = logging.getLogger(__name__)
BEFORE_PREFILL = "Abort before prefill"  # SGLang's message for a request never started


@dataclass
class Pending:
    req: GenRequest
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    rid: str


class Scheduler:
    def __init__(self, generator: Generator, max_batch: int = 32, version=None):
        """`version()`: the engine's weight version, stamped on each batch's results."""
        self.generator = generator
        self.version = version or (lambda: None)
        self.max_batch = max_batch
        self.model_lock = threading.Lock()
        self.waiting: queue.Queue[Pending] = queue.Queue()
        self.running: dict[str, Pending] = {}
        self.unpaused = threading.Event()
        self.unpaused.set()
        self.stopped = threading.Event()
        self.batches = 0
        self.generated_tokens = 0
        self.busy_seconds = 0.0
        self._thread = threading.Thread(target=self._loop, name="engine-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.unpaused.set()

    async def submit(self, req: GenRequest, rid: str) -> GenResult:
        loop = asyncio.get_running_loop()
        pending = Pending(req, loop.create_future(), loop, rid)
        self.waiting.put(pending)
        try:
            return await pending.future
        except asyncio.CancelledError:
            req.aborted.set()  # client went away: stop spending compute on it
            raise

    def pause(self, abort_running: bool) -> None:
        self.unpaused.clear()
        if abort_running:
            self.abort(abort_all=True, rid=None)

    def resume(self) -> None:
        self.unpaused.set()

    def abort(self, abort_all: bool, rid: str | None) -> int:
        """Abort matching running and waiting requests; they finish with type "abort"."""
        hits = 0
        for p in list(self.running.values()) + list(self.waiting.queue):
            if abort_all or p.rid == rid:
                p.req.aborted.set()
                hits += 1
        return hits

    @property
    def queue_depth(self) -> int:
        return self.waiting.qsize()

    def _take_batch(self) -> list[Pending]:
        try:
            first = self.waiting.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                batch.append(self.waiting.get_nowait())
            except queue.Empty:
                break
        return batch

    def _loop(self) -> None:
        while not self.stopped.is_set():
            self.unpaused.wait()
            batch = self._take_batch()
            if not batch:
                continue
            for p in [p for p in batch if p.req.aborted.is_set()]:
                batch.remove(p)  # aborted while waiting: answered without running
                res = GenResult([], [], [], {"type": "abort", "message": BEFORE_PREFILL})
                p.loop.call_soon_threadsafe(_settle, p.future, res, None)
            if not batch:
                continue
            with self.model_lock:
                if not self.unpaused.is_set():
                    # paused while we were collecting: put them back for after the pause
                    for p in batch:
                        self.waiting.put(p)
                    continue
                version = self.version()
                self.running = {p.rid: p for p in batch}
                started = time.monotonic()
                try:
                    results = self.generator.run([p.req for p in batch])
                    errors: list[BaseException | None] = [None] * len(batch)
                except Exception as exc:  # a broken batch fails its requests, not the engine
                    log.exception("generation batch failed")
                    results, errors = [None] * len(batch), [exc] * len(batch)
                finally:
                    self.running = {}
                self.busy_seconds += time.monotonic() - started
                self.batches += 1
            for p, res, err in zip(batch, results, errors, strict=True):
                if res is not None:
                    res.weight_version = version
                    self.generated_tokens += len(res.output_ids)
                p.loop.call_soon_threadsafe(_settle, p.future, res, err)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
