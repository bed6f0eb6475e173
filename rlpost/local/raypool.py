"""The local reward pool of `rlpost run --reward-workers N`: one Ray head node with N CPUs,
started as `ray start --head --block` in its own process group (a role like the others).

Why a separate `ray start` and not `ray.init(num_cpus=N)` inside the buffer: the buffer then
connects by address exactly as it does to the pool's head Service in a cluster (one code
path), the pool outlives a buffer restart, and `rlpost run` stops it by process group with
the other roles. N CPUs on one head node give N concurrent reward tasks (one Ray worker
process each); separate worker nodes would add a raylet per worker and buy nothing on one
machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

OBJECT_STORE_BYTES = 100 * 1024 * 1024  # rewards pass strings and floats: Ray's minimum-ish


def ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def head_argv(port: int, cpus: int) -> list[str]:
    return [
        ray_bin(),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        f"--num-cpus={cpus}",
        "--num-gpus=0",
        "--node-ip-address=127.0.0.1",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
    ]


def head_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
