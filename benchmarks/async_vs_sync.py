"""Async (maxStaleness=2) vs synchronous (0) throughput of the example loop on this machine.

    python benchmarks/async_vs_sync.py [--steps 40] [--out benchmarks/results/async_vs_sync.json]

Each mode runs the example job through `rlpost run`'s LocalRun (real engines, router, buffer,
trainer). Throughput = response tokens trained per wall second over the steps after warm-up
(startup excluded). Prints the ratio async/sync and writes it with the machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlpost.local.runner import LocalRun  # noqa: E402
from rlpost.local.spec import load_job_file, resolve_local_paths  # noqa: E402

EXAMPLE = ROOT / "examples" / "copy-first-letter.yaml"
WARMUP = 5


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "note": "CPU cores shared with other work while measured",
    }


def measure(staleness: int, steps: int, work: Path) -> dict:
    job = resolve_local_paths(load_job_file(EXAMPLE), EXAMPLE.parent)
    job.spec.steps = steps
    job.spec.rollout.max_staleness = staleness
    run = LocalRun(job, work / f"staleness-{staleness}", quiet=True)
    try:
        run.start()
        result = run.follow(timeout_s=900)
    finally:
        run.stop()
    timed = result.steps[WARMUP:]
    seconds = timed[-1]["elapsed_s"] - result.steps[WARMUP - 1]["elapsed_s"]
    tokens = sum(r["response_tokens"] for r in timed)
    return {
        "max_staleness": staleness,
        "steps_timed": len(timed),
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "steps_per_second": len(timed) / seconds,
        "mean_sync_ms": sum(r["sync_ms"] for r in timed) / len(timed),
        "mean_batch_wait_s": sum(r["batch_wait_s"] for r in timed) / len(timed),
        "mean_train_s": sum(r["train_s"] for r in timed) / len(timed),
        "max_observed_staleness": max(r["max_staleness"] for r in result.steps),
        "final_reward": result.steps[-1]["reward_mean"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/async_vs_sync.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlpost-bench-") as tmp:
        sync = measure(0, args.steps, Path(tmp))
        async_ = measure(2, args.steps, Path(tmp))
    ratio = async_["tokens_per_second"] / sync["tokens_per_second"]
    result = {
        "benchmark": "async_vs_sync",
        "job": "examples/copy-first-letter.yaml",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "sync": sync,
        "async": async_,
        "async_over_sync_throughput": ratio,
        # Async can hide at most the trainer's share of a synchronous step (train + sync)
        # behind generation, and only when the two do not share the same cores.
        "max_possible_ratio_if_overlap_were_free": 1
        + (sync["mean_train_s"] + sync["mean_sync_ms"] / 1000) / sync["mean_batch_wait_s"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"sync {sync['tokens_per_second']:.1f} tok/s, async(maxStaleness=2) "
        f"{async_['tokens_per_second']:.1f} tok/s: async/sync throughput ratio {ratio:.2f}"
    )


if __name__ == "__main__":
    main()
