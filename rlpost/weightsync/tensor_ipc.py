"""Serialising named tensors for /update_weights_from_tensor (colocated mode).

SGLang's `serialized_named_tensors` are ForkingPickler payloads (base64 on the HTTP wire):
CUDA tensors travel as CUDA IPC handles, CPU tensors as shared-memory segments (the
`file_system` sharing strategy, so an unrelated process can open them by name). The sender
must keep its tensors alive until the receiver answered.
"""

from __future__ import annotations

import base64
import io
import pickle
from multiprocessing.reduction import ForkingPickler

import torch
import torch.multiprocessing as mp
import torch.multiprocessing.reductions  # noqa: F401  (registers tensor reducers)


def serialize_named_tensors(named_tensors: list[tuple[str, torch.Tensor]]) -> str:
    mp.set_sharing_strategy("file_system")
    buf = io.BytesIO()
    ForkingPickler(buf, pickle.HIGHEST_PROTOCOL).dump(list(named_tensors))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def deserialize_named_tensors(payload: str) -> list[tuple[str, torch.Tensor]]:
    mp.set_sharing_strategy("file_system")
    return pickle.loads(base64.b64decode(payload))
