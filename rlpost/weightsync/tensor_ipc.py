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


def share_memory(t: torch.Tensor) -> torch.Tensor:
    """Move `t`'s storage into shared memory the way serialize_named_tensors shares it
    (`file_system`), so pickling it later neither copies nor moves it."""
    mp.set_sharing_strategy("file_system")
    t.untyped_storage().share_memory_()
    return t


def deserialize_named_tensors(payload: str) -> list[tuple[str, torch.Tensor]]:
    mp.set_sharing_strategy("file_system")
    return pickle.loads(base64.b64decode(payload))


class PayloadCache:
    """Engine side: decoded `serialized_named_tensors`, kept under the payload string.

    A colocated trainer (rlpost.weightsync.colocated) sends the same payload for the same
    memory every update, so the engine opens each IPC handle (cudaIpcOpenMemHandle, or the
    shared-memory segment on CPU) once, not once per update. Entries live for the update
    that used them and the next one: a payload the trainer stopped sending (its memory
    changed) is dropped, and the mapping with it. An update is told apart by its
    weight_version; without one nothing is kept. Next to each entry the engine may keep a
    `plan` (what its first load of that payload resolved, e.g. the source and target byte
    ranges of a one-copy load), dropped with the entry.
    """

    def __init__(self, decode=deserialize_named_tensors):
        self._decode = decode
        self._entries: dict[str, list] = {}  # payload -> [named tensors, plan or None]
        self._epoch: str | None = None
        self._used: set[str] = set()
        self.hits = 0
        self.misses = 0

    def get(self, payload: str, epoch: str | None) -> list[tuple[str, torch.Tensor]]:
        if epoch is None:
            self.misses += 1
            return self._decode(payload)
        if epoch != self._epoch:
            # A new update: forget what the previous one did not send.
            self._entries = {k: v for k, v in self._entries.items() if k in self._used}
            self._used = set()
            self._epoch = epoch
        entry = self._entries.get(payload)
        if entry is None:
            self.misses += 1
            entry = [self._decode(payload), None]
            self._entries[payload] = entry
        else:
            self.hits += 1
        self._used.add(payload)
        return entry[0]

    def plan(self, payload: str):
        entry = self._entries.get(payload)
        return None if entry is None else entry[1]

    def set_plan(self, payload: str, plan) -> None:
        entry = self._entries.get(payload)
        if entry is not None:
            entry[1] = plan

    def clear(self) -> None:
        self._entries.clear()
        self._used.clear()
        self._epoch = None

    def __len__(self) -> int:
        return len(self._entries)
