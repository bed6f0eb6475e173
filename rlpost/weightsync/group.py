"""A torch.distributed group that exists only for weight sync.

The trainer already has its own default (data-parallel) process group, and an engine may have
its own tensor-parallel one. The weight-sync group is therefore built directly from a
TCPStore + ProcessGroupGloo/NCCL object (what slime's `init_custom_process_group` achieves
with torch internals) and never touches the default group: both sides can hold it next to
whatever else they run. Rank 0 is the trainer; engines hold ranks rank_offset...
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass

import torch
import torch.distributed as dist

BACKENDS = ("gloo", "nccl")


@dataclass
class SyncGroup:
    """One weight-sync group as seen from one rank."""

    name: str
    rank: int
    world_size: int
    backend: str
    store: dist.Store
    pg: dist.ProcessGroup

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = src
        opts.rootTensor = 0
        self.pg.broadcast([tensor], opts).wait()

    def broadcast_async(self, tensor: torch.Tensor, src: int = 0) -> dist.Work:
        """Start a broadcast and return its work; call `.wait()` before reusing `tensor`.

        On NCCL, `.wait()` orders the caller's CUDA stream after the broadcast (no host
        block), so copies for the next bucket can run while this one is on the wire.
        """
        opts = dist.BroadcastOptions()
        opts.rootRank = src
        opts.rootTensor = 0
        return self.pg.broadcast([tensor], opts)

    def barrier(self) -> None:
        # A 1-element all-reduce works on every backend (gloo's barrier needs a device list).
        flag = torch.zeros(1, device="cuda" if self.backend == "nccl" else "cpu")
        self.pg.allreduce([flag]).wait()

    def destroy(self) -> None:
        # Dropping the references tears the connections down; shutdown() exists on NCCL only
        # in some torch versions, so it is called where available.
        shutdown = getattr(self.pg, "shutdown", None)
        if callable(shutdown):
            with contextlib.suppress(RuntimeError):
                shutdown()
        self.pg = None  # type: ignore[assignment]
        self.store = None  # type: ignore[assignment]


def create_sync_group(
    master_address: str,
    master_port: int,
    rank: int,
    world_size: int,
    group_name: str,
    backend: str = "gloo",
    timeout_s: float = 120.0,
) -> SyncGroup:
    """Join (rank > 0) or host (rank 0) the group; blocks until all `world_size` ranks joined."""
    if backend not in BACKENDS:
        raise ValueError(f"weight-sync backend {backend!r}: use one of {BACKENDS}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    timeout = dt.timedelta(seconds=timeout_s)
    store = dist.TCPStore(
        master_address,
        int(master_port),
        world_size,
        is_master=rank == 0,
        timeout=timeout,
        wait_for_workers=True,
    )
    prefixed = dist.PrefixStore(f"rlpost-weightsync/{group_name}", store)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        pg = dist.ProcessGroupNCCL(prefixed, rank, world_size, opts)
    else:
        pg = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
    group = SyncGroup(group_name, rank, world_size, backend, store, pg)
    group.barrier()  # every rank is connected before the caller returns
    return group
