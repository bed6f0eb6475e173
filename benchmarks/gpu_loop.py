"""`rlpost run` on a GPU machine: megatron trainer backend + reference engine on the GPU.

    python benchmarks/gpu_loop.py --steps 60 --out results.json

Runs examples/copy-first-letter.yaml through the real CLI (`python -m rlpost.cli run`)
twice, synchronous (maxStaleness 0) and asynchronous (maxStaleness 1), with overrides:
trainer.backend megatron on 1 GPU, one reference engine with gpusPerEngine 1, weight sync
`auto`. On 2 GPUs `rlpost run` puts the trainer on GPU0 and the engine on GPU1 and syncs
over NCCL. `--runs colocated` (the default on one GPU): `mode: colocated`, trainer and engine
share the GPU; per step the engine pauses and releases its memory, the trainer trains, the
engine resumes and takes the weights over CUDA IPC (rlpost.weightsync.colocated). Reports the
placement, the reward curve's start and end, the step time split (generate = waiting for
the buffer's batch, train, sync) and steps/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def spec_file(work: Path, colocated: bool = False) -> Path:
    job = yaml.safe_load((ROOT / "examples/copy-first-letter.yaml").read_text())
    spec = job["spec"]
    if colocated:
        spec["mode"] = "colocated"
    spec["data"]["prompts"] = str(ROOT / "examples/copy-first-letter.jsonl")
    spec["eval"]["prompts"] = str(ROOT / "examples" / spec["eval"]["prompts"])
    spec["trainer"].update(backend="megatron", gpusPerPod=1)
    spec["rollout"].update(engines=1, gpusPerEngine=1)
    spec["weightSync"]["transport"] = "auto"
    path = work / f"copy-first-letter-gpu{'-colocated' if colocated else ''}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def summarize(steps: list[dict], wall: float) -> dict:
    def med(key: str) -> float:
        return statistics.median(float(s[key]) for s in steps)

    rewards = [s["reward_mean"] for s in steps]
    k = min(10, len(steps))
    elapsed = [s["elapsed_s"] for s in steps]
    # Steady-state throughput: from the end of the first step to the end of the last.
    steady = (len(steps) - 1) / (elapsed[-1] - elapsed[0]) if len(steps) > 1 else 0.0
    extra = {}
    if "release_ms" in steps[0]:
        extra = {
            "release_ms_median": med("release_ms"),
            "resume_ms_median": med("resume_ms"),
            # the weight sync's share of a step (push only; release/resume are reported)
            "sync_share_of_step": med("sync_ms") / 1000.0 / med("step_s"),
            "sync_share_of_step_max": max(s["sync_ms"] / 1000.0 / s["step_s"] for s in steps),
        }
    return {
        **extra,
        "steps": len(steps),
        "reward_first10": sum(rewards[:k]) / k,
        "reward_last10": sum(rewards[-k:]) / k,
        "reward_max": max(rewards),
        "generate_s_median": med("batch_wait_s"),
        "train_s_median": med("train_s"),
        "sync_ms_median": med("sync_ms"),
        "step_s_median": med("step_s"),
        "steps_per_s": steady,
        "wall_s": wall,
        "max_staleness_seen": max(s["max_staleness"] for s in steps),
    }


def run(config: Path, steps: int, staleness: int, run_dir: Path, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "rlpost.cli", "run", str(config), "--steps", str(steps),
           "--run-dir", str(run_dir), "--max-staleness", str(staleness)]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    wall = time.monotonic() - t0
    steps_file = run_dir / "steps.jsonl"
    placement = [x for x in proc.stdout.splitlines() if x.startswith("placement:")]
    rows = (
        [json.loads(x) for x in steps_file.read_text().splitlines()] if steps_file.exists() else []
    )
    if proc.returncode != 0 or not rows:
        logs = {p.name: p.read_text()[-2000:] for p in (run_dir / "logs").glob("*.log")}
        return {"failed": proc.returncode, "stderr": proc.stderr[-3000:], "logs": logs}
    return {"placement": placement[0] if placement else None, **summarize(rows, wall)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu_loop.json"))
    parser.add_argument("--work", default="/tmp/rlpost-gpu-loop")
    parser.add_argument("--runs", default=None,
                        help="comma list of sync,async,colocated (default: sync,async on 2+ GPUs, "
                             "colocated on one)")  # fmt: skip
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    import torch

    runs = (args.runs or ("sync,async" if torch.cuda.device_count() >= 2 else "colocated")).split(
        ","
    )
    result = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "runs": {}}
    for name in runs:
        config = spec_file(work, colocated=name == "colocated")
        staleness = 1 if name == "async" else 0
        result["runs"][name] = run(config, args.steps, staleness, work / name, args.timeout)
        print(name, json.dumps(result["runs"][name])[:1500], flush=True)
    s, a = result["runs"].get("sync", {}), result["runs"].get("async", {})
    if "steps_per_s" in s and "steps_per_s" in a:
        result["async_over_sync_throughput"] = a["steps_per_s"] / s["steps_per_s"]
        print("async/sync throughput", result["async_over_sync_throughput"], flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    failed = [name for name, r in result["runs"].items() if "failed" in r]
    if failed:  # the results are written; make test-gpu must still fail
        sys.exit(f"rlpost run failed for: {', '.join(failed)} (see {args.out})")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
