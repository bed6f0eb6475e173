"""Where the host time of a weight update goes: py-spy on the engine and on the trainer
while `WeightSender.push` runs back to back (2 GPUs, NCCL).

    python benchmarks/profile_sync.py --model 7b --bucket-mb 1024 --pushes 60 --out DIR

Writes DIR/engine.txt and DIR/trainer.txt (py-spy's collapsed stacks, idle frames dropped)
and prints the top self-time functions of each. Needs `py-spy` on PATH.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import weight_sync as W  # noqa: E402


def top(path: Path, n: int = 25) -> list[tuple[str, int]]:
    self_time: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        self_time[frames[-1]] += int(count)
        total += int(count)
    print(f"{path.name}: {total} samples")
    for frame, c in self_time.most_common(n):
        print(f"  {100 * c / total:5.1f}%  {frame[:150]}")
    return self_time.most_common(n)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="7b", choices=list(W.MODELS))
    parser.add_argument("--bucket-mb", type=int, default=1024)
    parser.add_argument("--pushes", type=int, default=60)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    import torch

    from rlpost.weightsync.sender import WeightSender

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.cuda.set_device(0)
    named = W.build_source(W.MODELS[args.model])
    work = Path(tempfile.mkdtemp())
    engine = W.EngineProc(W.write_job(work, model=W.MODELS[args.model]), "1", work / "engine.log")
    sender = WeightSender([engine.url], token=W.TOKEN, backend="nccl", bucket_mb=args.bucket_mb,
                          master_address="127.0.0.1", load_format="flattened_bucket")  # fmt: skip
    try:
        sender.connect()
        for v in range(3):
            sender.push(named, v + 1)
        spies = [
            subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    "2000",
                    "--format",
                    "raw",
                    "--output",
                    str(out / name),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            for pid, name in ((engine.proc.pid, "engine.txt"), (os.getpid(), "trainer.txt"))
        ]
        time.sleep(2)
        walls = []
        for v in range(args.pushes):
            walls.append(sender.push(named, 100 + v))
        for s in spies:
            s.send_signal(2)
            s.wait(timeout=60)
        print(f"{args.pushes} pushes, median {sorted(walls)[len(walls) // 2] * 1e3:.2f} ms")
    finally:
        sender.close()
        engine.stop()
    for name in ("engine.txt", "trainer.txt"):
        if (out / name).exists():
            top(out / name)


if __name__ == "__main__":
    main()
