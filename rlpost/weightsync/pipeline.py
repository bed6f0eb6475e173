"""Pipelined HTTP/1.1 control channel to one engine (the weight-sync hot path).

SGLang's weight-update contract is one HTTP request per bucket. Sent one at a time, every
bucket pays a client round trip (request -> engine handles it -> response -> next request)
on top of its broadcast. Here all requests of an update go down ONE keep-alive connection
without waiting for answers (HTTP/1.1 pipelining, RFC 9112 section 9.3.2):

    POST /pause_generation
    POST /update_weights_from_distributed   (bucket 0)
    ...                                      (bucket n-1)
    POST /continue_generation

and a reader thread collects the answers, which an HTTP/1.1 server must send in request
order (uvicorn handles pipelined requests strictly one after the other). The engine thus
posts its receive for bucket k+1 as soon as it has answered bucket k, with no client round
trip in between, and the sender enqueues the broadcasts back to back. Paths, bodies and
headers are exactly those of the one-request-at-a-time client (same contract).

The reader runs in its own thread so neither side can block the other: the sender never
waits on an answer to write the next request, and answers never pile up unread. The
connection is kept for the next update while the engine keeps it open (keep-alive), so an
update does not start with a connect.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 64 * 1024


class PipelineError(RuntimeError):
    """The connection failed or an answer could not be read."""


@dataclass
class Answer:
    label: str  # what was asked, e.g. "POST /update_weights_from_distributed (bucket 3)"
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else {}

    def problem(self) -> str | None:
        """Why this answer is a failure (None: it is a success)."""
        if self.status != 200:
            return f"HTTP {self.status}: {self.body[:500].decode('utf-8', 'replace')}"
        try:
            data = self.json()
        except ValueError:
            return None
        # SGLang answers some failures with 200 and {"success": false, "message": ...}.
        if isinstance(data, dict) and data.get("success") is False:
            return str(data.get("message", data))
        return None


def _read_answer(f, label: str) -> Answer:
    """One HTTP/1.1 response from the buffered reader `f` (status, headers, body)."""
    line = f.readline(MAX_HEADER_BYTES)
    if not line:
        raise PipelineError(f"{label}: connection closed before the answer")
    parts = line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise PipelineError(f"{label}: bad status line {line[:100]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    size = 0
    while True:
        h = f.readline(MAX_HEADER_BYTES)
        if not h:
            raise PipelineError(f"{label}: connection closed in the answer's headers")
        size += len(h)
        if size > MAX_HEADER_BYTES:
            raise PipelineError(f"{label}: answer headers too large")
        if h in (b"\r\n", b"\n"):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
        return _read_answer(f, label)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size_line = f.readline(MAX_HEADER_BYTES)
            if not size_line:
                raise PipelineError(f"{label}: connection closed in a chunked body")
            n = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if n == 0:
                while f.readline(MAX_HEADER_BYTES) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                break
            chunks.append(_read_exact(f, n, label))
            _read_exact(f, 2, label)  # CRLF after the chunk
        body = b"".join(chunks)
    elif "content-length" in headers:
        body = _read_exact(f, int(headers["content-length"]), label)
    elif status in (204, 304):
        body = b""
    else:
        # No length: the body runs to the end of the connection (cannot pipeline further).
        body = f.read()
    return Answer(label, status, body)


def _read_exact(f, n: int, label: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise PipelineError(f"{label}: connection closed in the answer's body")
    return data


class PipelinedChannel:
    """All requests of one update to one engine on one connection; answers read in order.

    ch = PipelinedChannel(url, token); ch.send(path, body, label) ... ; answers = ch.finish()

    The connection outlives an update: `finish()` ends one update's exchange and leaves the
    channel ready for the next, so the next update pays no connect. `reusable()` says whether
    it may still be used (see WeightSender's keep_alive_s for why reuse is bounded in time).
    """

    def __init__(self, url: str, token: str = "", timeout_s: float = 300.0):
        u = urlsplit(url)
        if u.scheme != "http":
            raise ValueError(f"pipelined weight sync needs an http:// engine URL, got {url!r}")
        self.url = url.rstrip("/")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.base = u.path.rstrip("/")
        self.host_header = u.netloc
        self.token = token
        self.timeout_s = timeout_s
        self.sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._labels: list[str] = []  # this update's requests, in order
        self.answers: list[Answer] = []  # this update's answers so far
        self.error: str | None = None  # a read failure (the connection is then unusable)
        self._any_problem = False  # some answer of this update is a failure
        self._cond = threading.Condition()
        self._closed = False
        self.idle_since = time.monotonic()  # last time every request had its answer
        self._reader = threading.Thread(target=self._read_loop, daemon=True, name="ws-pipe")
        self._reader.start()

    # ------------------------------------------------------------------ writing

    def send(self, path: str, body: dict[str, Any] | bytes, label: str | None = None) -> None:
        """Write one POST now; its answer is read later, in order. `body`: a dict (sent as
        JSON) or the JSON bytes themselves (a caller that encoded them once)."""
        payload = (
            body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        )
        head = [
            f"POST {self.base}{path} HTTP/1.1",
            f"Host: {self.host_header}",
            "Content-Type: application/json",
            "Accept: application/json",
            f"Content-Length: {len(payload)}",
        ]
        if self.token:
            head.append(f"Authorization: Bearer {self.token}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload
        with self._cond:
            self._labels.append(label or f"POST {path}")
            self._cond.notify_all()
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise PipelineError(f"engine {self.url}: writing {label or path}: {e}") from e

    @property
    def failed(self) -> bool:
        """True once any answer of this update is a failure (or the connection broke)."""
        with self._cond:
            return self.error is not None or self._any_problem

    # ------------------------------------------------------------------ reading

    def _read_loop(self) -> None:
        f = self.sock.makefile("rb", buffering=256 * 1024)
        try:
            while True:
                with self._cond:
                    # Between updates nothing is read: an idle keep-alive connection that
                    # the engine closes is noticed by reusable(), not reported as an error.
                    while len(self.answers) >= len(self._labels) and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    label = self._labels[len(self.answers)]
                answer = _read_answer(f, label)
                bad = answer.problem() is not None
                with self._cond:
                    self.answers.append(answer)
                    self._any_problem |= bad
                    self._cond.notify_all()
        except (OSError, ValueError, PipelineError) as e:
            with self._cond:
                if not self._closed:
                    self.error = f"{type(e).__name__}: {e}"
                self._cond.notify_all()
        finally:
            f.close()

    def finish(self, timeout_s: float | None = None) -> list[Answer]:
        """Wait for the answer to every request of this update and return them; raise
        PipelineError if the connection failed or they did not all come within `timeout_s`.
        Afterwards the channel is ready for the next update."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.timeout_s)
        with self._cond:
            while len(self.answers) < len(self._labels) and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = self._labels[len(self.answers)]
                    raise PipelineError(
                        f"engine {self.url}: no answer to {missing} within the timeout"
                    )
                self._cond.wait(left)
            if len(self.answers) < len(self._labels):
                missing = self._labels[len(self.answers)]
                raise PipelineError(f"engine {self.url}: {missing}: {self.error}")
            answers = self.answers
            self._labels, self.answers, self._any_problem = [], [], False
            self.idle_since = time.monotonic()
            return answers

    def reusable(self, max_idle_s: float) -> bool:
        """May the next update use this connection? Only if nothing failed, it has been idle
        for less than `max_idle_s`, and the engine has not closed it (nothing to read)."""
        with self._cond:
            if self._closed or self.error is not None or self._labels or self._any_problem:
                return False
        if time.monotonic() - self.idle_since >= max_idle_s or not self._reader.is_alive():
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        # Readable while idle: the engine closed it (EOF) or sent bytes nobody asked for.
        return not readable

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(timeout=5)
