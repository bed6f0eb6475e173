"""The buffer's /generate client: one step's worth of concurrent requests (groupSize x
rolloutBatchSize of the example: 8 x 16 = 128, one new token each) through the real
sglang-router to the example's two reference engines, sent with aiohttp (what the buffer
uses) and, as the baseline, with httpx.AsyncClient (what it used before), in the same run.

    python benchmarks/rollout_client.py [--rounds 15] [--out results.json]

Engines and router are what `rlpost run` starts (rlpost.local.runner.LocalRun's first two
waves); the rounds of the two clients alternate. Each round is one step's batch, timed from
the first request sent to the last answer read: on this 2-core machine the client's CPU
competes with the router's and the engines', as the buffer's does in a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "rollout_image"))
EXAMPLE = ROOT / "examples" / "copy-first-letter.yaml"


async def one_round(post, url: str, bodies: list[dict]) -> float:
    t0 = time.perf_counter()
    outs = await asyncio.gather(*(post(url, b) for b in bodies))
    assert all(o["meta_info"]["finish_reason"]["type"] != "abort" for o in outs), outs[:1]
    return time.perf_counter() - t0


async def measure(router_url: str, bodies: list[dict], rounds: int) -> dict[str, list[float]]:
    import aiohttp
    import httpx

    url = f"{router_url}/generate"
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=300), connector=aiohttp.TCPConnector(limit=0)
    )
    client = httpx.AsyncClient(timeout=300)

    async def post_aiohttp(u, body):
        async with session.post(u, json=body) as r:
            r.raise_for_status()
            return json.loads(await r.text())

    async def post_httpx(u, body):
        r = await client.post(u, json=body)
        r.raise_for_status()
        return r.json()

    clients = {"aiohttp": post_aiohttp, "httpx": post_httpx}
    times: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for post in clients.values():  # warm-up: connections, the engines' first batches
            await one_round(post, url, bodies)
        for _ in range(rounds):
            for name, post in clients.items():
                times[name].append(await one_round(post, url, bodies))
    finally:
        await session.close()
        await client.aclose()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from rlpost_rollout.buffer.driver import sample_seed
    from rlpost_rollout.protocol import generate_payload

    from rlpost.local.runner import LocalRun
    from rlpost.local.spec import load_job_file, resolve_local_paths
    from rlpost.models import build_tokenizer

    job = resolve_local_paths(load_job_file(EXAMPLE), EXAMPLE.parent)
    spec = job.spec
    tok = build_tokenizer(spec.model)
    prompts = [json.loads(x)["prompt"] for x in Path(spec.data.prompts).read_text().splitlines()]
    n, group = spec.algorithm.rollout_batch_size, spec.algorithm.group_size
    bodies = [
        generate_payload(
            tok.encode(prompts[i % len(prompts)]),
            max_new_tokens=spec.rollout.max_new_tokens,
            temperature=spec.rollout.temperature,
            rid=f"bench-{i}-{j}",
            sampling_seed=sample_seed(spec.seed, i, j),
        )
        for i in range(n)
        for j in range(group)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        run = LocalRun(job, Path(tmp), quiet=True)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "job.yaml").write_text(json.dumps(job.wire()))
        try:
            for wave in run.roles()[:2]:  # the engines, then the router
                for role in wave:
                    run.procs.start(role)
                run.procs.wait_healthy(wave, 180)
            times = asyncio.run(measure(run.urls["router"], bodies, args.rounds))
        finally:
            run.stop()
    med = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "benchmark": "rollout_client",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "requests_per_round": len(bodies),
        "rounds": args.rounds,
        "median_round_s": med,
        "rounds_s": times,
        "speedup_aiohttp_over_httpx": med["httpx"] / med["aiohttp"],
        "load_average": os.getloadavg(),
    }
    print(
        f"{len(bodies)} concurrent /generate through sglang-router to 2 engines, median of "
        f"{args.rounds} rounds: aiohttp {med['aiohttp'] * 1e3:.0f} ms, httpx (baseline) "
        f"{med['httpx'] * 1e3:.0f} ms; ratio {result['speedup_aiohttp_over_httpx']:.2f}x"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
