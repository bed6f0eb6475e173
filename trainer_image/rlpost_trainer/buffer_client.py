"""The trainer's side of the Buffer API (docs/CONTRACTS.md "Buffer API")."""

from __future__ import annotations

import logging
import time

import httpx

from rlpost_trainer.batch import Batch

log = logging.getLogger("rlpost_trainer.buffer")


class BufferError(RuntimeError):
    pass


class BatchNotReady(BufferError):
    """GET /batch timed out on the buffer side (HTTP 504): the batch may still come."""


class BufferClient:
    def __init__(self, url: str, token: str | None, timeout_s: float = 60.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

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

    def batch(self, step: int, timeout_s: float, retries: int = 3) -> Batch:
        """Batch for `step`; blocks up to timeout_s on the buffer side. Connection errors
        are retried (GET /batch is idempotent: a restarted buffer serves the same groups)."""
        for attempt in range(retries + 1):
            try:
                r = self.http.get(
                    "/batch",
                    params={"step": step, "timeout_s": timeout_s},
                    timeout=timeout_s + 30,
                )
                if r.status_code == 504:
                    raise BatchNotReady(f"buffer GET /batch?step={step}: HTTP 504: {r.text[:500]}")
                return Batch.model_validate(self._check(r, f"GET /batch?step={step}"))
            except httpx.TransportError as e:
                if attempt == retries:
                    raise BufferError(f"buffer unreachable for step {step}: {e}") from e
                log.warning("buffer unreachable, retrying", extra={"step": step, "error": str(e)})
                time.sleep(2.0 * (attempt + 1))
        raise AssertionError("unreachable")

    def post_weight_version(self, version: int) -> None:
        r = self.http.post("/weight_version", json={"version": version})
        if r.status_code == 409:
            # Only after a resume: the buffer's live version is ahead of the checkpoint (the
            # run trained past it before the crash) and versions never move back. Samples
            # carry the engines' own version, so staleness is still enforced per sample.
            log.warning("buffer is ahead of the resumed weight version: %s", r.text[:200])
            return
        self._check(r, "POST /weight_version")

    def checkpoint_cursor(self, step: int) -> int:
        data = self._check(self.http.get("/checkpoint", params={"step": step}), "GET /checkpoint")
        return int(data["cursor"])

    def resume(self, step: int, cursor: int | None) -> dict:
        return self._check(
            self.http.post("/resume", json={"step": step, "cursor": cursor}), "POST /resume"
        )

    def records(self) -> dict:
        return self._check(self.http.get("/records"), "GET /records")

    def close(self) -> None:
        self.http.close()
