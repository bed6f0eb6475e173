"""The trainer's side of the Buffer API (docs/CONTRACTS.md "Buffer API")."""

from __future__ import annotations

import logging
import os
import time

import httpx

from rlpost_trainer.batch import Batch

log = logging.getLogger("rlpost_trainer.buffer")


class BufferError(RuntimeError):
    pass


class BatchNotReady(BufferError):
    """GET /batch timed out on the buffer side (HTTP 504): the batch may still come."""


class BufferClient:
    """Every call rides out a buffer that is away for a while (its pod restarted or
    recreated by the operator, its state kept on its volume): connection errors and
    502/503 answers are retried for up to `unreachable_s` (RLPOST_BUFFER_UNREACHABLE_S,
    default 600 s). Every call is idempotent on the buffer's side."""

    def __init__(
        self,
        url: str,
        token: str | None,
        timeout_s: float = 60.0,
        unreachable_s: float | None = None,
    ):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)
        if unreachable_s is None:
            unreachable_s = float(os.environ.get("RLPOST_BUFFER_UNREACHABLE_S", "600"))
        self.unreachable_s = unreachable_s

    def _send(self, method: str, path: str, what: str, **kw) -> httpx.Response:
        deadline = time.monotonic() + self.unreachable_s
        pause = 1.0
        while True:
            try:
                r = self.http.request(method, path, **kw)
                if r.status_code not in (502, 503):
                    return r
                problem = f"HTTP {r.status_code}: {r.text[:200]}"
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {e}"
            if time.monotonic() >= deadline:
                raise BufferError(
                    f"buffer {what}: unreachable for {self.unreachable_s:.0f}s: {problem}"
                )
            log.warning("buffer unreachable, retrying", extra={"call": what, "error": problem})
            time.sleep(pause)
            pause = min(pause * 2, 10.0)

    def _check(self, r: httpx.Response, what: str) -> dict:
        if r.status_code >= 400:
            raise BufferError(f"buffer {what}: HTTP {r.status_code}: {r.text[:500]}")
        return r.json()

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                if self.http.get("/health").status_code == 200:
                    return
            except httpx.HTTPError as e:
                last = str(e)
            time.sleep(0.5)
        raise BufferError(f"buffer at {self.url} not healthy after {timeout_s:.0f}s: {last}")

    def batch(self, step: int, timeout_s: float) -> Batch:
        """Batch for `step`; blocks up to timeout_s on the buffer side. GET /batch is
        idempotent: a restarted buffer serves the same groups."""
        what = f"GET /batch?step={step}"
        r = self._send(
            "GET",
            "/batch",
            what,
            params={"step": step, "timeout_s": timeout_s},
            timeout=timeout_s + 30,
        )
        if r.status_code == 504:
            raise BatchNotReady(f"buffer {what}: HTTP 504: {r.text[:500]}")
        return Batch.model_validate(self._check(r, what))

    def post_weight_version(self, version: int) -> None:
        r = self._send("POST", "/weight_version", "POST /weight_version", json={"version": version})
        if r.status_code == 409:
            # Only after a resume: the buffer's live version is ahead of the checkpoint (the
            # run trained past it before the crash) and versions never move back. Samples
            # carry the engines' own version, so staleness is still enforced per sample.
            log.warning("buffer is ahead of the resumed weight version: %s", r.text[:200])
            return
        self._check(r, "POST /weight_version")

    def checkpoint_cursor(self, step: int) -> int:
        r = self._send("GET", "/checkpoint", "GET /checkpoint", params={"step": step})
        data = self._check(r, "GET /checkpoint")
        return int(data["cursor"])

    def resume(self, step: int, cursor: int | None) -> dict:
        r = self._send("POST", "/resume", "POST /resume", json={"step": step, "cursor": cursor})
        return self._check(r, "POST /resume")

    def evaluate(self, step: int, timeout_s: float | None = None) -> dict:
        """POST /eval: spec.eval's prompts at the engines' current weights (a retried step
        gets the buffer's first answer)."""
        if timeout_s is None:
            timeout_s = float(os.environ.get("RLPOST_EVAL_TIMEOUT_S", "1800"))
        r = self._send("POST", "/eval", "POST /eval", json={"step": step}, timeout=timeout_s)
        return self._check(r, "POST /eval")

    def records(self) -> dict:
        return self._check(self._send("GET", "/records", "GET /records"), "GET /records")

    def close(self) -> None:
        self.http.close()
