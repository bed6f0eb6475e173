"""Parameters packed back to back, so a flattened bucket can be received straight into them.

The trainer sends each bucket as one broadcast of its tensors' bytes in HF order
(rlpost.weightsync.flat). An engine whose parameters live in one buffer per (device,
dtype), in `named_parameters()` order, holds a bucket of same-dtype neighbours as one
contiguous byte range: the broadcast can land in the weights themselves, with no staging
buffer and no copy after the wire (the copy is what an engine pays per bucket otherwise,
and the last bucket's copy sits on the critical path of every update).

SGLang cannot do this (its `load_weights` fuses q/k/v and gate/up and shards for tensor
parallelism); the reference engine keeps HF layout, so it can. Anything that is not one
contiguous same-dtype run (a cast, a bucket out of order) takes the staged path instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


@torch.no_grad()
def pack_parameters(
    model: torch.nn.Module, shapes: Mapping[str, Sequence[int]] | None = None, fill: bool = True
) -> int:
    """Re-home every parameter in one buffer per (device, dtype), in named_parameters()
    order; returns the number of buffers. `shapes`: allocate zeros of these shapes instead of
    copying the current values (the storage was released, see the engine's resume); with
    `fill=False` the new buffer is left uninitialised (the caller writes every byte)."""
    groups: dict[tuple[torch.device, torch.dtype], list[tuple[str, torch.nn.Parameter]]] = {}
    for name, p in model.named_parameters():  # tied weights come once
        groups.setdefault((p.device, p.dtype), []).append((name, p))
    for (device, dtype), params in groups.items():
        dims = [tuple(shapes[n]) if shapes else tuple(p.shape) for n, p in params]
        sizes = [math.prod(d) for d in dims]
        make = torch.zeros if shapes and fill else torch.empty
        flat = make(sum(sizes), dtype=dtype, device=device)
        at = 0
        for (_, p), dim, size in zip(params, dims, sizes, strict=True):
            view = flat[at : at + size].view(dim)
            if not shapes:
                view.copy_(p.data)
            p.data = view  # the old storage is freed as the last reference goes
            at += size
    return len(groups)


def packed_span(
    targets: Sequence[torch.Tensor], dtypes: Sequence[torch.dtype]
) -> torch.Tensor | None:
    """The bytes of `targets` as one uint8 tensor over their own storage, when they sit back
    to back in it in this order with exactly these dtypes; None otherwise."""
    if not targets:
        return None
    first = targets[0]
    storage = first.untyped_storage()
    base = storage.data_ptr()
    end = first.data_ptr()
    for t, dtype in zip(targets, dtypes, strict=True):
        if (
            t.dtype != dtype
            or not t.is_contiguous()
            or t.data_ptr() != end
            or t.untyped_storage().data_ptr() != base
        ):
            return None
        end += t.numel() * t.element_size()
    span = torch.empty(0, dtype=torch.uint8, device=first.device)
    return span.set_(storage, first.data_ptr() - base, (end - first.data_ptr(),))
