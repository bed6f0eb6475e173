"""Dtype names on the wire: SGLang's payloads carry "bfloat16" (or "torch.bfloat16")."""

from __future__ import annotations

import torch

WIRE_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "bool": torch.bool,
}


def dtype_from_wire(name: str) -> torch.dtype:
    key = str(name).removeprefix("torch.")
    if key not in WIRE_DTYPES:
        raise ValueError(f"unknown dtype {name!r}: use one of {sorted(WIRE_DTYPES)}")
    return WIRE_DTYPES[key]


def dtype_to_wire(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
