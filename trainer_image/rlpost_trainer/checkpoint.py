"""Checkpoints: `<dir>/step-<k>/state.pt` holds what training step k starts from.

Saved after step k-1 trained: model, optimizer, RNG states and the buffer's prompt cursor at
the start of step k (the buffer owns the cursor; it is stored here so a resume can tell the
buffer exactly where to continue). Written to a temp dir and renamed: a crash never leaves
a half-written checkpoint that looks complete.

Several ranks: the state every rank holds alike (data parallel) is written once, by global
rank 0, into state.pt. A backend whose state is sharded (Megatron TP/PP) has one file per
shard, `shard-<key>.pt` next to state.pt (key e.g. `tp1-pp0`; data-parallel replicas of a
shard share it and one writes it), written into the temp dir before rank 0 completes it.
Every rank loads state.pt (and its shard) on resume: the directory is shared by the ranks.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])


def tmp_dir(root: Path, step: int) -> Path:
    """Where step k's checkpoint is assembled (the same name on every rank)."""
    return root / f".tmp-step-{step:08d}"


def begin(root: Path, step: int) -> Path:
    """An empty temp dir for step k (rank 0, before any shard is written)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir(root, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def shard_file(key: str) -> str:
    return f"shard-{key}.pt"


def save_shard(root: Path, step: int, key: str, backend_state: dict[str, Any]) -> None:
    """One shard of step k's backend state, into the temp dir `begin` made."""
    path = tmp_dir(root, step) / shard_file(key)
    part = path.with_name(f".{path.name}.{os.getpid()}")
    torch.save({"backend": backend_state, "rng": rng_state()}, part)
    part.replace(path)


def save(
    root: Path,
    step: int,
    backend_state: dict[str, Any] | None,
    cursor: int | None,
    tmp: Path | None = None,
) -> Path:
    """Write state.pt and make step k's checkpoint complete. `tmp`: the dir from `begin`,
    already holding the shards (backend_state is then None)."""
    if tmp is None:
        tmp = begin(root, step)
    final = step_dir(root, step)
    torch.save(
        {"step": step, "cursor": cursor, "backend": backend_state, "rng": rng_state()},
        tmp / STATE_FILE,
    )
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def latest_step(root: Path) -> int | None:
    if not root.is_dir():
        return None
    steps = [
        int(p.name.removeprefix("step-"))
        for p in root.glob("step-*")
        if (p / STATE_FILE).exists() and p.name.removeprefix("step-").isdigit()
    ]
    return max(steps) if steps else None


def load(root: Path, step: int) -> dict[str, Any]:
    path = step_dir(root, step) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint for step {step} at {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    set_rng_state(state["rng"])
    return state


def load_shard(root: Path, step: int, key: str) -> dict[str, Any]:
    """This rank's shard of step k's backend state (and its RNG states)."""
    path = step_dir(root, step) / shard_file(key)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint shard {key} for step {step} at {path}")
    shard = torch.load(path, map_location="cpu", weights_only=False)
    set_rng_state(shard["rng"])
    return shard["backend"]
