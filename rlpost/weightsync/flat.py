"""SGLang's "flattened_bucket" load format: one broadcast per bucket instead of one a tensor.

Layout (as sglang.srt.weight_sync.tensor_bucket.FlattenedTensorBucket): every tensor of the
bucket, flattened and viewed as bytes (uint8), concatenated in `names` order, no padding.
The HTTP metadata (names, dtypes, shapes) is unchanged; the payload says
`load_format: "flattened_bucket"`. Hundreds of small broadcasts cost NCCL launch latency
each; one broadcast a bucket runs at the link's speed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLATTENED_BUCKET = "flattened_bucket"


def nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def flatten(tensors: Sequence[torch.Tensor], device: torch.device | str) -> torch.Tensor:
    """The bucket's bytes as one contiguous uint8 tensor on `device`."""
    out = empty_flat(tensors, device)
    fill_flat(out, tensors)
    return out


def empty_flat(tensors: Sequence[torch.Tensor], device: torch.device | str) -> torch.Tensor:
    """An uninitialised uint8 buffer the size of the bucket (the step that can fail: OOM)."""
    return torch.empty(sum(t.numel() * t.element_size() for t in tensors), dtype=torch.uint8,
                       device=device)  # fmt: skip


def fill_flat(out: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    """Copy the tensors' bytes into `out`, in order: one copy a tensor (a plain device copy
    runs at memory speed; `torch.cat` of byte views measured slower than the wire on H200)."""
    at, to_gpu = 0, out.is_cuda
    for t in tensors:
        src = t.detach().contiguous().reshape(-1).view(torch.uint8)
        out[at : at + src.numel()].copy_(src, non_blocking=to_gpu)
        at += src.numel()


def unflatten(
    flat: torch.Tensor, dtypes: Sequence[torch.dtype], shapes: Sequence[Sequence[int]]
) -> list[torch.Tensor]:
    """Views of `flat` (uint8) as the bucket's tensors; a misaligned one is copied first."""
    out, at = [], 0
    for dtype, shape in zip(dtypes, shapes, strict=True):
        n = nbytes(shape, dtype)
        piece = flat[at : at + n]
        if at % dtype.itemsize:
            piece = piece.clone()  # view(dtype) needs an offset divisible by the item size
        out.append(piece.view(dtype).reshape(tuple(shape)))
        at += n
    if at != flat.numel():
        raise ValueError(f"flattened bucket has {flat.numel()} bytes, metadata says {at}")
    return out
