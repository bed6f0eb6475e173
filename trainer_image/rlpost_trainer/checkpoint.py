"""Checkpoints: `<dir>/step-<k>/state.pt` holds what training step k starts from.

Saved after step k-1 trained: model, optimizer, RNG states and the buffer's prompt cursor at
the start of step k (the buffer owns the cursor; it is stored here so a resume can tell the
buffer exactly where to continue). Written to a temp dir and renamed: a crash never leaves
a half-written checkpoint that looks complete.
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


def save(root: Path, step: int, backend_state: dict[str, Any], cursor: int | None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(
        {
            "step": step,
            "cursor": cursor,
            "backend": backend_state,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python": random.getstate(),
                "numpy": np.random.get_state(),
            },
        },
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
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return state
