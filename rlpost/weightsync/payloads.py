"""HTTP bodies of SGLang's weight-sync endpoints, as plain functions.

Field names are exactly SGLang's request dataclasses (sglang/srt/managers/io_struct.py);
the contract test parses the pinned wheel and checks every key these builders emit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from rlpost.weightsync.dtypes import dtype_to_wire

DEFAULT_GROUP = "rlpost_weight_sync"

PATH_INIT_GROUP = "/init_weights_update_group"
PATH_DESTROY_GROUP = "/destroy_weights_update_group"
PATH_UPDATE_DISTRIBUTED = "/update_weights_from_distributed"
PATH_UPDATE_TENSOR = "/update_weights_from_tensor"
PATH_PAUSE = "/pause_generation"
PATH_CONTINUE = "/continue_generation"
PATH_GET_VERSION = "/get_weight_version"


def init_group_payload(
    master_address: str,
    master_port: int,
    rank_offset: int,
    world_size: int,
    group_name: str = DEFAULT_GROUP,
    backend: str = "gloo",
) -> dict[str, Any]:
    return {
        "master_address": master_address,
        "master_port": int(master_port),
        "rank_offset": int(rank_offset),
        "world_size": int(world_size),
        "group_name": group_name,
        "backend": backend,
    }


def destroy_group_payload(group_name: str = DEFAULT_GROUP) -> dict[str, Any]:
    return {"group_name": group_name}


def update_distributed_payload(
    bucket: Sequence[tuple[str, torch.Tensor]],
    weight_version: str,
    group_name: str = DEFAULT_GROUP,
    flush_cache: bool = True,
    load_format: str | None = None,
) -> dict[str, Any]:
    """Metadata of one bucket; the tensors themselves follow by broadcast, in this order.

    load_format "flattened_bucket" (SGLang's): the bucket follows as ONE broadcast of its
    bytes (rlpost.weightsync.flat); None: one broadcast per tensor.
    """
    body = {
        "names": [n for n, _ in bucket],
        "dtypes": [dtype_to_wire(t.dtype) for _, t in bucket],
        "shapes": [list(t.shape) for _, t in bucket],
        "group_name": group_name,
        "flush_cache": flush_cache,
        "weight_version": str(weight_version),
    }
    if load_format is not None:
        body["load_format"] = load_format
    return body


def update_tensor_payload(
    serialized_named_tensors: list[str], weight_version: str, flush_cache: bool = True
) -> dict[str, Any]:
    """One serialized list per engine TP rank (see rlpost.weightsync.tensor_ipc)."""
    return {
        "serialized_named_tensors": serialized_named_tensors,
        "flush_cache": flush_cache,
        "weight_version": str(weight_version),
    }


def pause_payload(mode: str = "abort") -> dict[str, Any]:
    # "abort": in-flight requests return what they have (partial rollouts go back to the
    # buffer), so the weights never change under a running request.
    return {"mode": mode}


def continue_payload() -> dict[str, Any]:
    return {}


def tensor_nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_mb: float
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group tensors in order into buckets of at most bucket_mb MiB.

    A single tensor larger than the cap goes alone in its own bucket (it cannot be split
    without the engine knowing how to reassemble it).
    """
    cap = int(bucket_mb * 1024 * 1024)
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in named_tensors:
        n = tensor_nbytes(t)
        if bucket and size + n > cap:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += n
    if bucket:
        yield bucket
