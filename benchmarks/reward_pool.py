"""Reward pool throughput: a reward costing ~200 ms of CPU per sample, scored with 1 and with
2 Ray workers in the same run (and, for reference, in the buffer process: workers 0).

    python benchmarks/reward_pool.py [--samples 40] [--rounds 2] [--out results.json]

Each pool is what `rlpost run --reward-workers N` starts (rlpost.local.raypool: `ray start
--head --block --num-cpus=N`), and samples are scored through the buffer's own wiring
(`rlpost_rollout.buffer.__main__.reward_fn`: RewardPool, max in flight 2 per worker), all of
a batch submitted at once, as the driver does for its groups. Engines and trainer are not
running: on a 2-core machine they would take the cores the comparison is about. Worker
processes are warmed up (a small batch) before each timed batch. The 1- and 2-worker rounds
alternate; both heads stay up, idle before the first round (a head starting up, with its
prestarted workers, takes a good part of a core here). A control with a 200 ms sleep as the
reward shows the pool's own scaling when free cores are not the limit. The machine's load
average is recorded with each figure: other work on the machine lowers the 2-worker figure
first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
COST_S = 0.2
FUNCTION = "benchmarks.reward_pool:burn_200ms"
CONTROL = "benchmarks.reward_pool:sleep_200ms"


def burn_200ms(prompt: str, response: str, label) -> float:
    """~200 ms of CPU time of the calling thread (a thread of the buffer, or a Ray worker)."""
    end = time.thread_time() + COST_S
    x = 0
    while time.thread_time() < end:
        x += 1
    return 1.0


def sleep_200ms(prompt: str, response: str, label) -> float:
    """The control: 200 ms of wall time and no CPU, so free cores do not matter."""
    time.sleep(COST_S)
    return 1.0


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


async def timed_batch(reward, n: int, tag: str) -> float:
    t = time.perf_counter()
    got = await asyncio.gather(
        *(reward("p", "r", None, key=f"{tag}-{i}") for i in range(n)),
    )
    assert got == [1.0] * n
    return n / (time.perf_counter() - t)


def measure_in_buffer(samples: int, rounds: int) -> dict:
    from rlpost_rollout.rewards import make_reward

    from rlpost.api import RewardSpec

    reward = make_reward(RewardSpec(type="custom", function=FUNCTION))
    runs = [
        {"samples_per_s": asyncio.run(timed_batch(reward, samples, f"b{r}")), "load": loadavg()}
        for r in range(rounds)
    ]
    return {"workers": 0, "runs": runs}


def start_head(workers: int) -> tuple[subprocess.Popen, str]:
    """The Ray head `rlpost run --reward-workers N` starts, in its own process group."""
    from rlpost.local import raypool
    from rlpost.local.runner import free_port

    port = free_port()
    env = raypool.head_env({**os.environ, "PYTHONPATH": str(ROOT)})
    with open(f"/tmp/rlpost-bench-ray-{workers}.log", "wb") as log:
        head = subprocess.Popen(
            raypool.head_argv(port, workers),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return head, f"127.0.0.1:{port}"


def group_cpu_s(pgids: list[int]) -> float:
    """CPU seconds used so far by the processes of these process groups."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in pgids:  # field 5 of stat: the process group
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def settle(pgids: list[int], below: float = 0.1, max_s: float = 180.0) -> float:
    """Wait until the Ray heads are idle (start-up, prestarted workers done): their CPU use
    under `below` cores over 5 s. Returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s:
        a, t = group_cpu_s(pgids), time.monotonic()
        time.sleep(5)
        if (group_cpu_s(pgids) - a) / (time.monotonic() - t) < below:
            break
    return time.monotonic() - t0


def measure_pool(
    workers: int, address: str, samples: int, tag: str, function: str = FUNCTION
) -> dict:
    """Connect as the buffer does, warm the worker processes up, time one batch."""
    import ray
    from rlpost_rollout.buffer.__main__ import reward_fn
    from rlpost_rollout.buffer.metrics import BufferMetrics

    from rlpost.api import RewardSpec

    os.environ["RLPOST_RAY_ADDRESS"] = address
    spec = RewardSpec(type="custom", function=function, pool={"workers": workers})
    try:
        reward = reward_fn(spec, BufferMetrics("bench"))

        async def run() -> float:
            await timed_batch(reward, 4 * workers, f"warm-{tag}")  # start worker processes
            return await timed_batch(reward, samples, tag)

        return {"samples_per_s": asyncio.run(run()), "load": loadavg()}
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_before = loadavg()
    results = [measure_in_buffer(args.samples, args.rounds)]
    heads = {n: start_head(n) for n in (1, 2)}
    pools: dict[int, list[dict]] = {1: [], 2: []}
    try:
        settled_s = settle([h.pid for h, _ in heads.values()])
        # Interleaved (1, 2, 1, 2, ...): a change of load on the machine hits both alike.
        for r in range(args.rounds):
            for n in (1, 2):
                pools[n].append(measure_pool(n, heads[n][1], args.samples, f"w{n}-{r}"))
        control = {
            n: measure_pool(n, heads[n][1], args.samples, f"c{n}", CONTROL)["samples_per_s"]
            for n in (1, 2)
        }
    finally:
        for head, _ in heads.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, 9)
            head.wait(timeout=30)
    results += [{"workers": n, "runs": runs} for n, runs in pools.items()]
    for r in results:
        r["median_samples_per_s"] = statistics.median(x["samples_per_s"] for x in r["runs"])
        # CPU the reward actually got: samples/s x 0.2 CPU-s per sample (2.0 = both cores).
        r["reward_cores"] = round(r["median_samples_per_s"] * COST_S, 2)
    by = {r["workers"]: r["median_samples_per_s"] for r in results}
    out = {
        "benchmark": "reward_pool",
        "started": started,
        "cpus": os.cpu_count(),
        "reward_cpu_s": COST_S,
        "samples_per_round": args.samples,
        "rounds": args.rounds,
        "load_before": load_before,
        "heads_settled_s": round(settled_s, 1),
        "load_after": loadavg(),
        "results": results,
        "ratio_2_over_1": by[2] / by[1],
        "ideal_samples_per_s": {"1": 1 / COST_S, "2": 2 / COST_S},
        # The same pools with a 200 ms sleep as the reward: the pool's own scaling, free
        # cores or not.
        "control_sleep_samples_per_s": control,
        "control_ratio_2_over_1": control[2] / control[1],
    }
    for r in results:
        where = "buffer process" if r["workers"] == 0 else f"{r['workers']} Ray worker(s)"
        loads = ", ".join(f"{x['load'][0]:.2f}" for x in r["runs"])
        print(
            f"{where:>18}: {r['median_samples_per_s']:5.2f} samples/s = {r['reward_cores']:.2f} "
            f"cores of reward CPU  (load1 {loads})"
        )
    print(f"2 workers / 1 worker: {out['ratio_2_over_1']:.2f}x  (load before {load_before})")
    print(
        f"control (200 ms sleep): {control[1]:.2f} -> {control[2]:.2f} samples/s, "
        f"{out['control_ratio_2_over_1']:.2f}x"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
