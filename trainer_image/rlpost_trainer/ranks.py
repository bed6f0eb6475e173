"""Who this trainer process is in the gang, and its process groups.

The env contract of a trainer pod (docs/CONTRACTS.md): the operator sets `NNODES` (trainer
pods), `NPROC_PER_NODE` (ranks per pod, one per GPU), `RLPOST_POD_INDEX` (the pod ordinal)
and `MASTER_ADDR`/`MASTER_PORT` (pod 0). `python -m rlpost_trainer` in a pod whose gang has
more than one rank is the launcher (launch.py): it starts `NPROC_PER_NODE` ranks, each with
torchrun's variables `RANK` = pod index x NPROC_PER_NODE + local rank, `WORLD_SIZE` = NNODES x
NPROC_PER_NODE, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`. A process that has `RANK` is one rank.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass

# The env the launcher reads (set by the operator, or by `rlpost run`).
NNODES = "NNODES"
NPROC_PER_NODE = "NPROC_PER_NODE"
POD_INDEX = "RLPOST_POD_INDEX"


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, "")
    try:
        value = int(raw) if raw.strip() else default
    except ValueError:
        raise SystemExit(f"{key}={raw!r} is not an integer") from None
    if value < 0:
        raise SystemExit(f"{key}={raw!r} is negative")
    return value


@dataclass(frozen=True)
class Gang:
    """The launcher's view: pods x ranks per pod, and which pod this is."""

    nnodes: int
    nproc: int
    pod_index: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Gang:
        env = os.environ if env is None else env
        nnodes = max(1, _int(env, NNODES, 1))
        index = env.get(POD_INDEX, "").strip()
        if not index and nnodes > 1:
            # The operator sets it from the pod's `rlpost.dev/pod-index` label; an indexed
            # pod's name (`<job>-trainer-<i>`) ends in the same ordinal.
            tail = env.get("POD_NAME", "").rsplit("-", 1)[-1]
            if not tail.isdigit():
                raise SystemExit(
                    f"{POD_INDEX} is empty (no rlpost.dev/pod-index label on the pod) and "
                    f"POD_NAME={env.get('POD_NAME', '')!r} has no ordinal: this pod's place in "
                    f"the gang of {nnodes} is unknown"
                )
            index = tail
        gang = cls(
            nnodes=nnodes,
            nproc=max(1, _int(env, NPROC_PER_NODE, 1)),
            pod_index=_int({POD_INDEX: index}, POD_INDEX, 0),
        )
        if gang.pod_index >= gang.nnodes:
            raise SystemExit(f"{POD_INDEX}={gang.pod_index} but {NNODES}={gang.nnodes}")
        return gang

    def rank_env(self, local_rank: int) -> dict[str, str]:
        """torchrun's variables for one of this pod's ranks."""
        return {
            "RANK": str(self.pod_index * self.nproc + local_rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(self.nproc),
            "GROUP_RANK": str(self.pod_index),
        }


def needs_launch(env: Mapping[str, str] | None = None) -> bool:
    """True in a process that must start the ranks (not itself a rank)."""
    env = os.environ if env is None else env
    return "RANK" not in env and Gang.from_env(env).world_size > 1


@dataclass(frozen=True)
class Ranks:
    """This rank: global rank, world size, local rank (its GPU in the pod)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Global rank 0: pulls batches, pushes weights, reports progress, writes the
        replicated checkpoint."""
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Ranks:
        env = os.environ if env is None else env
        world = max(1, _int(env, "WORLD_SIZE", 1))
        rank = _int(env, "RANK", 0)
        if rank >= world:
            raise SystemExit(f"RANK={rank} but WORLD_SIZE={world}")
        return cls(rank, world, _int(env, "LOCAL_RANK", 0))


def init_process_group(ranks: Ranks, cuda: bool, timeout_s: float) -> None:
    """The default group over every trainer rank (env:// rendezvous at MASTER_ADDR:PORT):
    NCCL on GPUs, gloo on the CPU. Nothing for one rank."""
    import torch
    import torch.distributed as dist

    if ranks.world_size <= 1 or dist.is_initialized():
        return
    if cuda:
        torch.cuda.set_device(ranks.local_rank)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        raise SystemExit("MASTER_PORT is not set: the ranks cannot meet")
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        rank=ranks.rank,
        world_size=ranks.world_size,
        timeout=dt.timedelta(seconds=timeout_s),
    )


def control_group(timeout_s: float):
    """A gloo group over every rank for Python objects (the batch rank 0 pulled); the
    default group when that is gloo already. None for one rank."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    return dist.new_group(backend="gloo", timeout=dt.timedelta(seconds=timeout_s))


def dp_rows(n: int, dp_rank: int, dp_size: int) -> tuple[int, int]:
    """The contiguous rows [lo, hi) of an n-row batch that data-parallel rank `dp_rank`
    trains on (ceil(n / dp_size) each; the last ones may get fewer or none)."""
    per = -(-n // dp_size)
    return min(n, dp_rank * per), min(n, (dp_rank + 1) * per)
