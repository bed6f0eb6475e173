"""steps.jsonl -> reward_curve.png."""

from __future__ import annotations

import json
from pathlib import Path


def read_steps(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the writer is mid-line; the rest is read next time
    return out


def reward_curve(steps: list[dict], out: Path, title: str, chance: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [r["step"] for r in steps]
    ax.plot(xs, [r["reward_mean"] for r in steps], label="mean reward", lw=1.5)
    evals = [r for r in steps if r.get("eval_greedy") is not None]
    if evals:  # spec.eval: held-out prompts after the eval steps' weight push
        ex = [r["step"] for r in evals]
        ax.plot(ex, [r["eval_greedy"] for r in evals], "o-", ms=4, lw=1, label="eval greedy")
        k = evals[-1].get("eval_k", "k")
        ax.plot(ex, [r["eval_pass_at_k"] for r in evals], "s--", ms=4, lw=1, label=f"eval pass@{k}")
    if chance is not None:
        ax.axhline(chance, ls="--", c="gray", lw=1, label=f"chance ({chance:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
