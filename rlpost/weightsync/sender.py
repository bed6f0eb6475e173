"""Trainer side of weight sync (disaggregated): rank 0 of the weight-sync group.

Per update, the requests slime sends SGLang:
    POST /pause_generation                      (every engine)
    for each bucket of <= bucketMB:
        POST /update_weights_from_distributed   (every engine ...)
        group.broadcast(tensor(s))              (... with these broadcasts)
    POST /continue_generation                   (every engine, also after a failure)
Every control call carries `Authorization: Bearer $RLPOST_TOKEN`.

Default (`pipelined=True`, rlpost.weightsync.pipeline): per engine ONE keep-alive HTTP/1.1
connection carries all of an update's requests back to back; the broadcasts are enqueued
without waiting for any answer, and the answers are checked in order at the end. The
engine posts each bucket's receive as soon as it has answered the previous one, so no
client round trip sits between buckets. The connection is reused by the next update when
that comes within `keep_alive_s`. `pipelined=False`: one request at a time, each bucket's
answer awaited before the next bucket (SGLang clients' usual way; kept for comparison).

"flattened_bucket": a bucket whose tensors already sit back to back in one storage, in
order (a trainer that packed its weights, rlpost.weightsync.packed) is broadcast from that
memory as it is; any other bucket is first copied into a flat buffer.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import torch

from rlpost.ports import free_port
from rlpost.weightsync import payloads as P
from rlpost.weightsync.flat import FLATTENED_BUCKET, empty_flat, fill_flat
from rlpost.weightsync.group import SyncGroup, create_sync_group
from rlpost.weightsync.packed import packed_span
from rlpost.weightsync.pipeline import PipelinedChannel, PipelineError

log = logging.getLogger("rlpost.weightsync")


class WeightSyncFailed(RuntimeError):
    pass


def local_address_for(url: str) -> str:
    """The address of this host as the engine at `url` sees it (the route's source IP)."""
    host = httpx.URL(url).host or "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


class ChannelPool(dict[str, PipelinedChannel]):
    """The control connection to each engine, kept for the next update while it may be
    reused (idle < keep_alive_s, the last update's answers all read, not closed by the
    engine); shared by the NCCL/gloo and the colocated senders."""

    def __init__(self, token: str, timeout_s: float):
        super().__init__()
        self.token, self.timeout_s = token, timeout_s

    def channel(self, url: str, keep_alive_s: float) -> PipelinedChannel:
        ch = self.pop(url, None)
        if ch is not None and ch.reusable(keep_alive_s):
            self[url] = ch
            return ch
        if ch is not None:
            ch.close()
        try:
            ch = PipelinedChannel(url, self.token, self.timeout_s)
        except OSError as e:
            raise WeightSyncFailed(f"engine {url}: cannot connect: {e}") from e
        self[url] = ch
        return ch

    def close_all(self) -> None:
        for ch in self.values():
            ch.close()
        self.clear()


def finish_all(channels: Iterable[PipelinedChannel]) -> None:
    """Read every channel's answers to the end; raise one WeightSyncFailed naming every
    engine and request that failed (a broken channel does not hide the others' errors)."""
    errors = []
    for ch in channels:
        try:
            answers = ch.finish()
        except PipelineError as e:
            errors.append(str(e))
            continue
        errors += [f"engine {ch.url}: {a.label}: {a.problem()}" for a in answers if a.problem()]
    if errors:
        raise WeightSyncFailed("; ".join(errors))


class WeightSender:
    def __init__(
        self,
        engine_urls: Sequence[str],
        token: str | None = None,
        backend: str = "gloo",
        bucket_mb: float = 1024,
        group_name: str = P.DEFAULT_GROUP,
        master_address: str | None = None,
        master_port: int | None = None,
        ranks_per_engine: Sequence[int] | None = None,
        http_timeout_s: float = 300.0,
        group_timeout_s: float = 120.0,
        load_format: str | None = None,
        pause_mode: str = "abort",
        pipelined: bool = True,
        keep_alive_s: float = 2.0,
    ):
        if not engine_urls:
            raise ValueError("weight sync needs at least one engine URL (RLPOST_ENGINE_URLS)")
        self.engine_urls = [u.rstrip("/") for u in engine_urls]
        self.backend = backend
        self.bucket_mb = bucket_mb
        self.group_name = group_name
        self.master_address = master_address or local_address_for(self.engine_urls[0])
        self.master_port = master_port or free_port()
        # SGLang engines with tensor parallelism hold several ranks each.
        self.ranks_per_engine = list(ranks_per_engine or [1] * len(self.engine_urls))
        self.group_timeout_s = group_timeout_s
        # "abort": in-flight requests end now and the buffer re-draws them (synchronous
        # runs: nothing may finish on old weights). "in_place": they wait and continue after
        # the update (async runs: work made ahead is kept; the buffer enforces staleness).
        self.pause_mode = pause_mode
        token = token if token is not None else os.environ.get("RLPOST_TOKEN", "")
        self.token = token
        self.http_timeout_s = http_timeout_s
        self.pipelined = pipelined
        # An idle control connection is reused for this long. Servers close idle keep-alive
        # connections on their own timer (uvicorn, which SGLang runs on: 5 s by default); a
        # request written into a connection as it closes would be lost after its bucket's
        # broadcast was enqueued, so reuse stays well inside that timer.
        self.keep_alive_s = keep_alive_s
        self._channels = ChannelPool(token, http_timeout_s)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(headers=headers, timeout=http_timeout_s)
        self.pool = ThreadPoolExecutor(max_workers=max(2, len(self.engine_urls)))
        self.group: SyncGroup | None = None
        self.last_bucket_sizes: list[int] = []
        self.last_in_place_buckets = 0  # flattened buckets sent from the weights' own memory
        # "flattened_bucket": one broadcast per bucket, pipelined (see _send_flat).
        if load_format not in (None, FLATTENED_BUCKET):
            raise ValueError(f"load_format {load_format!r}: use None or {FLATTENED_BUCKET!r}")
        self.load_format = load_format

    @property
    def world_size(self) -> int:
        return 1 + sum(self.ranks_per_engine)

    # ------------------------------------------------------------------ HTTP helpers

    def _post(self, url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = self.http.post(url + path, json=body)
        except httpx.HTTPError as e:
            raise WeightSyncFailed(f"engine {url}{path}: {type(e).__name__}: {e}") from e
        if r.status_code >= 400:
            raise WeightSyncFailed(f"engine {url}{path}: HTTP {r.status_code}: {r.text[:500]}")
        data = r.json() if r.content else {}
        # SGLang answers some failures with 200 and {"success": false, "message": ...}.
        if isinstance(data, dict) and data.get("success") is False:
            raise WeightSyncFailed(f"engine {url}{path}: {data.get('message', data)}")
        return data if isinstance(data, dict) else {"result": data}

    def _post_all(self, path: str, bodies: Sequence[dict[str, Any]]) -> list[Future]:
        return [
            self.pool.submit(self._post, url, path, body)
            for url, body in zip(self.engine_urls, bodies, strict=True)
        ]

    @staticmethod
    def _wait(futures: Iterable[Future]) -> None:
        errors = []
        for f in futures:
            try:
                f.result()
            except Exception as e:  # every engine's failure is reported, not just the first
                errors.append(str(e))
        if errors:
            raise WeightSyncFailed("; ".join(errors))

    # ------------------------------------------------------------------ lifecycle

    def connect(self) -> None:
        """Engines join the group (rank offsets 1..) while this process hosts rank 0."""
        offsets, nxt = [], 1
        for n in self.ranks_per_engine:
            offsets.append(nxt)
            nxt += n
        bodies = [
            P.init_group_payload(
                self.master_address,
                self.master_port,
                off,
                self.world_size,
                self.group_name,
                self.backend,
            )
            for off in offsets
        ]
        futures = self._post_all(P.PATH_INIT_GROUP, bodies)
        try:
            self.group = create_sync_group(
                self.master_address,
                self.master_port,
                0,
                self.world_size,
                self.group_name,
                self.backend,
                self.group_timeout_s,
            )
        except Exception as e:
            # The engines' answers usually say why the group did not form.
            for f in futures:
                if f.done() and f.exception():
                    raise WeightSyncFailed(str(f.exception())) from e
            raise WeightSyncFailed(f"weight-sync group did not form: {e}") from e
        self._wait(futures)
        log.info(
            "weight-sync group ready",
            extra={"world_size": self.world_size, "backend": self.backend},
        )

    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]], weight_version: int) -> float:
        """Send one full set of weights; returns the wall seconds the update took."""
        if self.group is None:
            self.connect()
        assert self.group is not None
        device = "cuda" if self.backend == "nccl" else "cpu"
        self.last_in_place_buckets = 0
        if self.pipelined:
            return self._push_pipelined(named_tensors, weight_version, device)
        start = time.perf_counter()
        self._wait(
            self._post_all(P.PATH_PAUSE, [P.pause_payload(self.pause_mode)] * len(self.engine_urls))
        )
        sizes: list[int] = []
        try:
            if self.load_format == FLATTENED_BUCKET:
                sizes = self._send_flat(named_tensors, weight_version, device)
                named_tensors = ()
            for bucket in P.buckets(named_tensors, self.bucket_mb):
                bucket = [(n, t.detach().to(device).contiguous()) for n, t in bucket]
                body = P.update_distributed_payload(bucket, str(weight_version), self.group_name)
                futures = self._post_all(P.PATH_UPDATE_DISTRIBUTED, [body] * len(self.engine_urls))
                for _, t in bucket:
                    self.group.broadcast(t, src=0)
                self._wait(futures)
                sizes.append(sum(P.tensor_nbytes(t) for _, t in bucket))
        finally:
            self._wait(
                self._post_all(P.PATH_CONTINUE, [P.continue_payload()] * len(self.engine_urls))
            )
        self.last_bucket_sizes = sizes
        return time.perf_counter() - start

    def _send_flat(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], weight_version: int, device: str
    ) -> list[int]:
        """One broadcast per bucket. While bucket k is on the wire, the host posts bucket
        k+1's metadata and the GPU flattens it: the broadcast of k is waited on only after
        k+1's is launched (on NCCL a wait orders streams; it does not block the host)."""
        assert self.group is not None
        sizes: list[int] = []
        in_flight: list[tuple[torch.Tensor, Any]] = []
        for bucket in P.buckets(named_tensors, self.bucket_mb):
            (flat,), to_fill = self._bucket_tensors(bucket, device)
            if to_fill:
                fill_flat(flat, [t for _, t in bucket])
            else:
                self.last_in_place_buckets += 1
            body = P.update_distributed_payload(
                bucket, str(weight_version), self.group_name, load_format=FLATTENED_BUCKET
            )
            futures = self._post_all(P.PATH_UPDATE_DISTRIBUTED, [body] * len(self.engine_urls))
            work = self.group.broadcast_async(flat, src=0)
            for _, previous in in_flight:
                previous.wait()
            in_flight = [(flat, work)]
            sizes.append(flat.numel())
            del bucket
            self._wait(futures)
        for _, work in in_flight:
            work.wait()
        if device == "cuda":
            torch.cuda.current_stream().synchronize()  # the bytes are at the engines
        return sizes

    # ------------------------------------------------------------------ pipelined

    def _bucket_tensors(self, bucket, device: str) -> tuple[list[torch.Tensor], bool]:
        """What goes on the wire for one bucket, and whether it still has to be filled
        (fill_flat) after its request is written. Everything that can fail happens here."""
        if self.load_format != FLATTENED_BUCKET:
            return [t.detach().to(device).contiguous() for _, t in bucket], False
        tensors = [t for _, t in bucket]
        span = packed_span(tensors, [t.dtype for t in tensors])
        if span is not None and span.device.type == device:
            return [span], False  # the weights' own bytes: nothing to copy
        return [empty_flat(tensors, device)], True

    def _push_pipelined(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], weight_version: int, device: str
    ) -> float:
        """All requests down one connection per engine, broadcasts back to back, answers
        checked at the end (see rlpost.weightsync.pipeline)."""
        assert self.group is not None
        start = time.perf_counter()
        channels: list[PipelinedChannel] = []
        ok = False
        try:
            channels = [self._channels.channel(url, self.keep_alive_s) for url in self.engine_urls]
            for ch in channels:
                ch.send(P.PATH_PAUSE, P.pause_payload(self.pause_mode), f"POST {P.PATH_PAUSE}")
            sizes: list[int] = []
            in_place = 0
            # Broadcasts of the previous bucket: waited on after the next one is launched, so
            # the host never waits on the wire (NCCL: a wait only orders the CUDA stream).
            in_flight: list[Any] = []
            keep: list[torch.Tensor] = []
            continued = False
            try:
                for i, bucket in enumerate(P.buckets(named_tensors, self.bucket_mb)):
                    if any(ch.failed for ch in channels):
                        break  # an engine refused an update: send no more buckets
                    # Once an engine has a request, its broadcast must follow. A flat buffer
                    # is filled after the write, so the engine parses the request while this
                    # GPU copies the bucket.
                    tensors, to_fill = self._bucket_tensors(bucket, device)
                    body = P.update_distributed_payload(
                        bucket,
                        str(weight_version),
                        self.group_name,
                        load_format=self.load_format,
                    )
                    label = f"POST {P.PATH_UPDATE_DISTRIBUTED} (bucket {i}, {len(bucket)} tensors)"
                    for ch in channels:
                        ch.send(P.PATH_UPDATE_DISTRIBUTED, body, label)
                    if to_fill:
                        fill_flat(tensors[0], [t for _, t in bucket])
                    else:
                        in_place += self.load_format == FLATTENED_BUCKET
                    works = [self.group.broadcast_async(t, src=0) for t in tensors]
                    for w in in_flight:
                        w.wait()
                    in_flight, keep = works, tensors
                    sizes.append(sum(P.tensor_nbytes(t) for t in tensors))
                    del bucket
                # Continue goes down right behind the last bucket: the engine answers it
                # once its GPU has applied the update.
                for ch in channels:
                    ch.send(P.PATH_CONTINUE, P.continue_payload(), f"POST {P.PATH_CONTINUE}")
                continued = True
            finally:
                if not continued:
                    for ch in channels:
                        ch.send(P.PATH_CONTINUE, P.continue_payload(), f"POST {P.PATH_CONTINUE}")
                for w in in_flight:
                    w.wait()
                del keep
                if device == "cuda":
                    torch.cuda.current_stream().synchronize()  # the bytes left this GPU
            finish_all(channels)
            ok = True
        except PipelineError as e:
            raise WeightSyncFailed(str(e)) from e
        finally:
            if not ok:  # after a failure, the next update starts on fresh connections
                self._channels.close_all()
        self.last_bucket_sizes = sizes
        self.last_in_place_buckets = in_place
        return time.perf_counter() - start

    def close(self, engine_urls: Sequence[str] | None = None) -> None:
        """Destroy the group and release the connections. `engine_urls`: the members to
        tell (default all; an engine that is gone is left out so nothing waits on it)."""
        if self.group is not None:
            tell = self.engine_urls if engine_urls is None else [u.rstrip("/") for u in engine_urls]
            futures = [
                self.pool.submit(
                    self._post, url, P.PATH_DESTROY_GROUP, P.destroy_group_payload(self.group_name)
                )
                for url in tell
            ]
            # NCCL tears a communicator down collectively (the engine's shutdown waits for
            # ours): leave the group while the engines leave theirs, then read the answers.
            # Waiting for the answers first deadlocked on GPUs.
            self.group.destroy()
            self.group = None
            try:
                self._wait(futures)
            except WeightSyncFailed as e:
                log.warning("destroying the weight-sync group on an engine failed: %s", e)
        self._channels.close_all()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()
