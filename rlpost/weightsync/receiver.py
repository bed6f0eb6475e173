"""Engine side of weight sync: receive HF-named tensors and load them into the model.

The reference engine (and anything else holding a torch model with HF parameter names)
calls this from its SGLang-compatible endpoints:

    /init_weights_update_group      -> WeightReceiver.init_group(...)
    /update_weights_from_distributed-> WeightReceiver.receive(names, dtypes, shapes)
    /update_weights_from_tensor     -> WeightReceiver.load_tensors(deserialize(...))
    /destroy_weights_update_group   -> WeightReceiver.destroy()

Loading is all-or-nothing per call: the metadata is checked first, and a call whose metadata
names an unknown parameter or a wrong shape still drains the broadcast (so the trainer does
not hang) and then raises WeightSyncError, leaving the model untouched. A valid
"flattened_bucket" whose parameters sit back to back in the model's memory (an engine that
packed them, rlpost.weightsync.packed) is received straight into the weights; everything
else goes through a staging buffer and a copy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import torch

from rlpost.weightsync.dtypes import dtype_from_wire
from rlpost.weightsync.flat import FLATTENED_BUCKET, nbytes, unflatten
from rlpost.weightsync.group import SyncGroup, create_sync_group
from rlpost.weightsync.packed import packed_span


class WeightSyncError(ValueError):
    """A weight update that was refused; the model is unchanged."""


class WeightReceiver:
    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.group: SyncGroup | None = None
        # Parameters and persistent buffers, by HF name (what the trainer sends).
        self._targets: dict[str, torch.Tensor] = dict(model.named_parameters())
        self._targets.update(
            {n: b for n, b in model.named_buffers() if n not in self._nonpersistent(model)}
        )
        self._lock = threading.Lock()  # one update at a time touches the weights
        self._side_stream = None  # CUDA stream the receives are issued from (see _recv)
        self.direct_buckets = 0  # flattened buckets received straight into the weights
        self.span_copies = 0  # load_tensors buckets applied as one copy (packed both sides)

    @staticmethod
    def _nonpersistent(model: torch.nn.Module) -> set[str]:
        out: set[str] = set()
        for prefix, module in model.named_modules():
            for b in getattr(module, "_non_persistent_buffers_set", ()):
                out.add(f"{prefix}.{b}" if prefix else b)
        return out

    @property
    def names(self) -> list[str]:
        return list(self._targets)

    # ------------------------------------------------------------------ group lifecycle

    def init_group(
        self,
        master_address: str,
        master_port: int,
        rank_offset: int,
        world_size: int,
        group_name: str,
        backend: str = "gloo",
        timeout_s: float = 120.0,
    ) -> None:
        """Join the trainer's group as rank `rank_offset` (the trainer is rank 0)."""
        if self.group is not None:
            raise WeightSyncError(
                f"weight-sync group {self.group.name!r} already initialised; destroy it first"
            )
        if rank_offset < 1:
            raise WeightSyncError("rank_offset must be >= 1 (rank 0 is the trainer)")
        self.group = create_sync_group(
            master_address, master_port, rank_offset, world_size, group_name, backend, timeout_s
        )

    def destroy(self, group_name: str | None = None) -> None:
        if self.group is None:
            return
        if group_name is not None and group_name != self.group.name:
            raise WeightSyncError(f"no weight-sync group {group_name!r} (have {self.group.name!r})")
        self.group.destroy()
        self.group = None

    # ------------------------------------------------------------------ updates

    def _recv(self, nbytes_or_shape, dtype: torch.dtype, device: str) -> torch.Tensor:
        """A new buffer, filled by the next broadcast from rank 0.

        On CUDA the buffer is allocated and the receive issued from a side stream, so the
        NCCL stream does not wait for the copies of the previous bucket (queued on the
        current stream): with pipelined requests the receives run back to back on the wire
        while the loads overlap them. The current stream then waits for the receive (no host
        block) and the buffer is recorded on it for the allocator.
        """
        assert self.group is not None
        if device != "cuda":
            buf = torch.empty(nbytes_or_shape, dtype=dtype, device=device)
            self.group.broadcast(buf, src=0)
            return buf
        with torch.cuda.stream(self._stream()):
            buf = torch.empty(nbytes_or_shape, dtype=dtype, device=device)
            work = self.group.broadcast_async(buf, src=0)
        work.wait()  # the current stream waits for the bytes
        buf.record_stream(torch.cuda.current_stream())
        return buf

    def problems(
        self, names: Sequence[str], shapes: Sequence[Sequence[int]] | None = None
    ) -> list[str]:
        """Why these names/shapes cannot be loaded (empty list: they can)."""
        errors = []
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                errors.append(f"{name!r} sent twice")
            seen.add(name)
            target = self._targets.get(name)
            if target is None:
                errors.append(f"unknown parameter {name!r}")
            elif shapes is not None and tuple(shapes[i]) != tuple(target.shape):
                errors.append(f"{name!r}: shape {list(shapes[i])} != model's {list(target.shape)}")
        return errors

    def receive(
        self,
        names: Sequence[str],
        dtypes: Sequence[str],
        shapes: Sequence[Sequence[int]],
        group_name: str | None = None,
        load_format: str | None = None,
    ) -> None:
        """Receive one bucket by broadcast from rank 0 and load it into the model.

        load_format "flattened_bucket": the bucket comes as one broadcast of its bytes
        (rlpost.weightsync.flat); None: one broadcast per tensor.
        """
        if self.group is None:
            raise WeightSyncError("no weight-sync group: call /init_weights_update_group first")
        if group_name is not None and group_name != self.group.name:
            raise WeightSyncError(f"no weight-sync group {group_name!r} (have {self.group.name!r})")
        if not len(names) == len(dtypes) == len(shapes):
            raise WeightSyncError("names, dtypes and shapes must have the same length")
        try:
            wire_dtypes = [dtype_from_wire(d) for d in dtypes]
        except ValueError as e:
            raise WeightSyncError(str(e)) from e
        device = "cuda" if self.group.backend == "nccl" else "cpu"
        if load_format == FLATTENED_BUCKET:
            self._receive_flat(names, wire_dtypes, shapes, device)
            return
        if load_format not in (None, "", "auto"):
            raise WeightSyncError(f"load_format {load_format!r}: use flattened_bucket or none")
        with self._lock:
            # Receive everything first (also when invalid: the sender is already
            # broadcasting, and skipping a tensor would desynchronise the group).
            staged = []
            for shape, dtype in zip(shapes, wire_dtypes, strict=True):
                staged.append(self._recv(tuple(shape), dtype, device))
            errors = self.problems(names, shapes)
            if errors:
                raise WeightSyncError("weight update refused: " + "; ".join(errors))
            self._copy_in(zip(names, staged, strict=True))

    def _receive_flat(
        self,
        names: Sequence[str],
        dtypes: Sequence[torch.dtype],
        shapes: Sequence[Sequence[int]],
        device: str,
    ) -> None:
        assert self.group is not None
        with self._lock:
            errors = self.problems(names, shapes)
            # Straight into the weights when they sit back to back in this order and dtype
            # (rlpost.weightsync.packed): the metadata was checked before the first byte.
            span = None if errors else packed_span([self._targets[n] for n in names], dtypes)
            if span is not None:
                self._recv_into(span)
                self.direct_buckets += 1
                return
            # One broadcast of the whole bucket (drained also when invalid, see receive).
            size = sum(nbytes(s, d) for s, d in zip(shapes, dtypes, strict=True))
            flat = self._recv((size,), torch.uint8, device)
            if errors:
                raise WeightSyncError("weight update refused: " + "; ".join(errors))
            self._copy_in(zip(names, unflatten(flat, dtypes, shapes), strict=True))

    def _recv_into(self, span: torch.Tensor) -> None:
        """Receive the next broadcast into `span` (a view of the weights themselves)."""
        assert self.group is not None
        if not span.is_cuda:
            self.group.broadcast(span, src=0)
            return
        side = self._stream()
        # Kernels queued before the pause may still read these weights: the receive that
        # overwrites them starts after them.
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            work = self.group.broadcast_async(span, src=0)
        work.wait()  # later kernels on the current stream see the new bytes

    def _stream(self) -> torch.cuda.Stream:
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream()
        return self._side_stream

    def load_tensors(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """update_weights_from_tensor: tensors given in-process (CUDA IPC / shared memory).
        Returns (target span, source span) when the bucket was loaded as one copy: the same
        tensors again (same memory) can then be loaded with copy_span alone."""
        items = list(named_tensors)
        errors = self.problems([n for n, _ in items], [tuple(t.shape) for _, t in items])
        if errors:
            raise WeightSyncError("weight update refused: " + "; ".join(errors))
        with self._lock:
            # One copy when the bucket is one run of the sender's memory and lands on one
            # run of the (packed) weights in the same order and dtypes: a colocated trainer's
            # buckets (rlpost.weightsync.colocated) into the reference engine's weights.
            sources = [t for _, t in items]
            dtypes = [t.dtype for t in sources]
            src = packed_span(sources, dtypes)
            dst = (
                packed_span([self._targets[n] for n, _ in items], dtypes)
                if src is not None
                else None
            )
            if dst is not None and dst.device == src.device and dst.numel() == src.numel():
                with torch.no_grad():
                    dst.copy_(src, non_blocking=True)
                self.span_copies += 1
                return dst, src
            self._copy_in(items)
        return None

    def copy_span(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """A bucket load_tensors already checked and resolved to one copy (same memory)."""
        with self._lock, torch.no_grad():
            dst.copy_(src, non_blocking=True)
            self.span_copies += 1

    @torch.no_grad()
    def _copy_in(self, items: Iterable[tuple[str, torch.Tensor]]) -> None:
        for name, tensor in items:
            target = self._targets[name]
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))
