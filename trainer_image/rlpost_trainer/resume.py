"""Where a (re)started trainer begins: RLPOST_RESUME_STEP only when its checkpoint exists.

The operator sets RLPOST_RESUME_STEP to the last checkpoint step the trainer reported. If
that checkpoint is missing (a volume replaced by hand, a checkpoint deleted), the trainer
does not fail: it resumes from the newest checkpoint before it, or starts fresh, and says so.
"""

from __future__ import annotations

from pathlib import Path

from rlpost_trainer.checkpoint import STATE_FILE, step_dir


def steps(root: Path) -> list[int]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted(
        int(p.name.removeprefix("step-"))
        for p in root.glob("step-*")
        if (p / STATE_FILE).exists() and p.name.removeprefix("step-").isdigit()
    )


def resume_point(root: Path, requested: int | None) -> tuple[int, str | None]:
    """The step to start from and, when it is not what was asked, why (a line to log).

    requested None (no RLPOST_RESUME_STEP): the newest checkpoint, else 0. requested k: k
    when its checkpoint exists, else the newest one <= k, else 0 (a fresh start)."""
    have = steps(root)
    if requested is None:
        return (have[-1] if have else 0), None
    if requested <= 0 or requested in have:
        return max(requested, 0), None
    older = [s for s in have if s <= requested]
    if older:
        return older[-1], (
            f"RLPOST_RESUME_STEP={requested} but {step_dir(root, requested)} does not exist; "
            f"resuming from the newest checkpoint at or before it, step {older[-1]}"
        )
    return 0, (
        f"RLPOST_RESUME_STEP={requested} but no checkpoint at or before step {requested} "
        f"exists under {root}; starting fresh from step 0"
    )
