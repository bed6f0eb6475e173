"""Trainer side of colocated weight sync: trainer and engines on the same GPUs (or host).

Same HTTP contract as SGLang: per update

    POST /pause_generation
    POST /update_weights_from_tensor   {serialized_named_tensors, weight_version}  (per bucket)
    POST /continue_generation          (answered once the engine's GPU applied the update)

and around training `POST /release_memory_occupation` / `/resume_memory_occupation`.
`serialized_named_tensors` are torch's own ForkingPickler payloads (rlpost.weightsync.
tensor_ipc): CUDA IPC handles on GPUs, `file_system` shared memory on CPU.

What makes it run at device speed:
- The tensors sent are views of ONE memory that stays put between updates: the trainer's
  own packed weights when they already are the wire (HF order, engine dtype, packed with
  rlpost.weightsync.packed), else a staging buffer allocated once (the bytes of every
  tensor back to back, HF order) that each update refills (one copy or cast per tensor).
- The serialized payload of a bucket is made once per memory layout and reused: IPC
  handles are exported once per storage, not per update (a new handle only when the
  trainer's storage changes). The engine keeps what it decoded under the payload string
  (rlpost.weightsync.tensor_ipc.PayloadCache), so it opens each handle once as well.
- Each bucket's views are neighbours in that memory, and the engine's weights are packed in
  the same order: the engine's load is one copy per bucket (packed_span on both sides).
- All requests of an update go down one keep-alive connection without waiting for answers
  (rlpost.weightsync.pipeline); the engine enqueues its copies and synchronises once, at
  continue.

The trainer synchronises its device before the first request (the engine, another process,
reads the memory) and must not write that memory before push() returns.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpx
import torch

from rlpost.weightsync import payloads as P
from rlpost.weightsync.packed import packed_span
from rlpost.weightsync.pipeline import PipelineError
from rlpost.weightsync.sender import ChannelPool, WeightSyncFailed, finish_all
from rlpost.weightsync.tensor_ipc import serialize_named_tensors, share_memory

log = logging.getLogger("rlpost.weightsync")

PATH_RELEASE = "/release_memory_occupation"
PATH_RESUME = "/resume_memory_occupation"
MEMORY_TAGS = ("weights", "kv_cache")


def memory_payload(tags: Sequence[str] | None = None) -> dict[str, Any]:
    """Body of /release_memory_occupation and /resume_memory_occupation (SGLang's
    ReleaseMemoryOccupationReqInput / ResumeMemoryOccupationReqInput: `tags`, None = all)."""
    return {"tags": list(tags) if tags is not None else None}


def post_engines(
    urls: Sequence[str], path: str, body: dict[str, Any], token: str | None = None,
    http: httpx.Client | None = None, timeout_s: float = 300.0,
) -> None:  # fmt: skip
    """POST `body` to every engine, one after the other; every failure is reported."""
    token = token if token is not None else os.environ.get("RLPOST_TOKEN", "")
    own = http is None
    if http is None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        http = httpx.Client(headers=headers, timeout=timeout_s)
    errors = []
    try:
        for url in urls:
            url = url.rstrip("/")
            try:
                r = http.post(url + path, json=body)
            except httpx.HTTPError as e:
                errors.append(f"engine {url}{path}: {type(e).__name__}: {e}")
                continue
            if r.status_code >= 400:
                errors.append(f"engine {url}{path}: HTTP {r.status_code}: {r.text[:500]}")
                continue
            data = r.json() if r.content else {}
            if isinstance(data, dict) and data.get("success") is False:
                errors.append(f"engine {url}{path}: {data.get('message', data)}")
    finally:
        if own:
            http.close()
    if errors:
        raise WeightSyncFailed("; ".join(errors))


def release_engines(
    urls: Sequence[str], token: str | None = None, tags: Sequence[str] | None = MEMORY_TAGS,
    http: httpx.Client | None = None,
) -> float:  # fmt: skip
    """Pause the engines (in-flight requests abort; new ones wait) and have them free their
    GPU memory (weights and KV cache) for training. Returns the wall seconds."""
    start = time.perf_counter()
    post_engines(urls, P.PATH_PAUSE, P.pause_payload("abort"), token, http)
    post_engines(urls, PATH_RELEASE, memory_payload(tags), token, http)
    return time.perf_counter() - start


def resume_engines(
    urls: Sequence[str], token: str | None = None, tags: Sequence[str] | None = MEMORY_TAGS,
    http: httpx.Client | None = None,
) -> float:  # fmt: skip
    """The engines take their memory back (weights restored as they were released);
    generation stays paused until the next push's continue. Returns the wall seconds."""
    start = time.perf_counter()
    post_engines(urls, PATH_RESUME, memory_payload(tags), token, http)
    return time.perf_counter() - start


def _shareable(t: torch.Tensor) -> bool:
    """Can another process open this tensor's memory as it is (no copy into shared memory)?"""
    return t.is_cuda or t.untyped_storage().is_shared()


class StagingBuffer:
    """Every tensor of an update back to back in one allocation that outlives the update
    (CUDA memory, or shared memory on CPU), so its IPC handle is exported once."""

    def __init__(self, layout: Sequence[tuple[str, tuple[int, ...], torch.dtype]], device):
        self.layout = tuple(layout)
        offsets, at = [], 0
        for _, shape, dtype in self.layout:
            at = -(-at // dtype.itemsize) * dtype.itemsize  # the element size's alignment
            offsets.append(at)
            at += math.prod(shape) * dtype.itemsize
        self.nbytes = at
        self.device = torch.device(device)
        self.flat = torch.empty(max(at, 1), dtype=torch.uint8, device=self.device)
        if self.device.type == "cpu":
            share_memory(self.flat)
        self.views = [
            (name, self.flat[off : off + math.prod(shape) * dtype.itemsize].view(dtype).view(shape))
            for (name, shape, dtype), off in zip(self.layout, offsets, strict=True)
        ]

    @torch.no_grad()
    def fill(self, named: Sequence[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
        for (_, view), (_, t) in zip(self.views, named, strict=True):
            view.copy_(t, non_blocking=True)  # a cast where the dtypes differ
        return self.views


class ColocatedSender:
    """Pushes weights to colocated engines through /update_weights_from_tensor (IPC).

    Same interface as WeightSender (push / close), plus release() and resume() of the
    engines' memory around training."""

    def __init__(
        self,
        engine_urls: Sequence[str],
        token: str | None = None,
        bucket_mb: float = 1024,
        pause_mode: str = "abort",
        http_timeout_s: float = 300.0,
        keep_alive_s: float = 2.0,
        dtype: torch.dtype | None = None,
    ):
        if not engine_urls:
            raise ValueError("weight sync needs at least one engine URL (RLPOST_ENGINE_URLS)")
        self.engine_urls = [u.rstrip("/") for u in engine_urls]
        self.bucket_mb = bucket_mb
        self.pause_mode = pause_mode
        self.keep_alive_s = keep_alive_s
        self.http_timeout_s = http_timeout_s
        # The engines' dtype: tensors of another dtype are cast into the staging buffer.
        self.dtype = dtype
        token = token if token is not None else os.environ.get("RLPOST_TOKEN", "")
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(headers=headers, timeout=http_timeout_s)
        self._channels = ChannelPool(self.token, self.http_timeout_s)
        self._stage: StagingBuffer | None = None
        self._last_plan: tuple | None = None  # (layout key, plan): see _plan
        self._used: set[tuple] = set()
        # payload cache: bucket key -> (serialized payload, the tensors it refers to)
        self._payloads: dict[tuple, tuple[str, list[torch.Tensor]]] = {}
        self.last_bucket_sizes: list[int] = []
        self.last_new_payloads = 0  # buckets whose IPC handles were exported by this push
        self.last_staged = False  # this push copied into the staging buffer
        self.backend = "ipc"

    # ------------------------------------------------------------------ memory

    def release(self, tags: Sequence[str] | None = MEMORY_TAGS) -> float:
        """release_engines on this sender's engines."""
        return release_engines(self.engine_urls, self.token, tags, self.http)

    def resume(self, tags: Sequence[str] | None = MEMORY_TAGS) -> float:
        """resume_engines on this sender's engines."""
        return resume_engines(self.engine_urls, self.token, tags, self.http)

    # ------------------------------------------------------------------ what goes out

    def _wire(self, named: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
        """The tensors to send: the caller's own when every bucket is one run of shareable
        memory in the wire dtype (a packed trainer), else the staging buffer's views."""
        want = self.dtype
        direct = all(_shareable(t) and (want is None or t.dtype == want) for _, t in named)
        if direct:
            for bucket in P.buckets(named, self.bucket_mb):
                ts = [t for _, t in bucket]
                if packed_span(ts, [t.dtype for t in ts]) is None:
                    direct = False
                    break
        self.last_staged = not direct
        if direct:
            self._stage = None
            return [(n, t.detach()) for n, t in named]
        layout = [(n, tuple(t.shape), want or t.dtype) for n, t in named]
        device = named[0][1].device if named else torch.device("cpu")
        if (
            self._stage is None
            or self._stage.layout != tuple(layout)
            or (self._stage.device != device)
        ):
            self._stage = None
            self._payloads.clear()
            self._stage = StagingBuffer(layout, device)
        return self._stage.views  # filled by every push (push: StagingBuffer.fill)

    def _payload(self, bucket: list[tuple[str, torch.Tensor]]) -> str:
        key = tuple(
            (n, t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype, t.device)
            for n, t in bucket
        )
        hit = self._payloads.get(key)
        if hit is None:
            payload = serialize_named_tensors(bucket)
            # Keep the tensors: their storage (and so the exported handle) must outlive the
            # payload, whoever else frees it.
            hit = (payload, [t for _, t in bucket])
            self._payloads[key] = hit
            self.last_new_payloads += 1
        self._used.add(key)
        return hit[0]

    # ------------------------------------------------------------------ push

    def _plan(self, named: list[tuple[str, torch.Tensor]]):
        """Per bucket, the request body as JSON bytes split around the weight version, and
        the bucket sizes; made once per memory layout (the same tensors at the same addresses
        next update reuse it). Also returns whether the tensors go through the stage."""
        key = tuple((n, t.data_ptr(), t.shape, t.dtype) for n, t in named)
        if self._last_plan is not None and self._last_plan[0] == key:
            return self._last_plan[1]
        self._used = set()
        wire = self._wire(named)
        buckets = list(P.buckets(wire, self.bucket_mb))
        marker = "@@rlpost-weight-version@@"
        bodies = []
        for b in buckets:
            body = P.update_tensor_payload([self._payload(b)], marker)
            head, tail = json.dumps(body, separators=(",", ":")).split(marker)
            bodies.append((head.encode(), tail.encode()))
        # Payloads of memory this layout does not send (the trainer's storage changed).
        for k in [k for k in self._payloads if k not in self._used]:
            del self._payloads[k]
        sizes = [sum(P.tensor_nbytes(t) for _, t in b) for b in buckets]
        plan = (bodies, sizes, self.last_staged, wire)
        self._last_plan = (key, plan)
        return plan

    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]], weight_version: int) -> float:
        """Send one full set of weights; returns the wall seconds until every engine has
        applied it (its continue answer comes after its device synchronised)."""
        start = time.perf_counter()
        ok = False
        try:
            channels = [self._channels.channel(url, self.keep_alive_s) for url in self.engine_urls]
            for ch in channels:  # first: the engines stop generating while this prepares
                ch.send(P.PATH_PAUSE, P.pause_payload(self.pause_mode), f"POST {P.PATH_PAUSE}")
            named = list(named_tensors)
            self.last_new_payloads = 0
            bodies, sizes, staged, wire = self._plan(named)
            if staged:
                assert self._stage is not None
                self._stage.fill(named)
            if wire and wire[0][1].is_cuda:
                torch.cuda.current_stream().synchronize()  # another process reads these bytes
            version = json.dumps(str(weight_version))[1:-1].encode()
            for ch in channels:
                for i, (head, tail) in enumerate(bodies):
                    label = f"POST {P.PATH_UPDATE_TENSOR} (bucket {i})"
                    ch.send(P.PATH_UPDATE_TENSOR, head + version + tail, label)
                ch.send(P.PATH_CONTINUE, P.continue_payload(), f"POST {P.PATH_CONTINUE}")
            finish_all(channels)
            ok = True
        except PipelineError as e:
            raise WeightSyncFailed(str(e)) from e
        finally:
            if not ok:
                self._channels.close_all()
        self.last_bucket_sizes = sizes
        return time.perf_counter() - start

    def close(self, engine_urls: Sequence[str] | None = None) -> None:
        """Drop the connections and the cached payloads (no group to destroy: IPC needs
        none; `engine_urls` is accepted for WeightSender's signature)."""
        del engine_urls
        self._channels.close_all()
        self._payloads.clear()
        self._last_plan = None
        self._stage = None
        self.http.close()
