"""The reference engine (rlpost_rollout.engine, unchanged) plus two benchmark-only routes.

    POST /bench/sync      torch.cuda.synchronize(): answers once every queued GPU op (the
                          weight loads included) has finished; timing ends after it.
    GET  /bench/checksum  per-parameter float64 sums, to check the pushed bytes landed.

Everything else is the engine's own app: the same endpoints the trainer drives.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import torch
import uvicorn
from rlpost_rollout import config
from rlpost_rollout.engine import Engine, create_app


def checksums(model: torch.nn.Module) -> dict[str, float]:
    with torch.no_grad():
        return {n: float(p.double().sum()) for n, p in model.named_parameters()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    job = config.load_job(None)
    engine = Engine(job)
    engine.remember_shapes()
    app = create_app(engine, config.token())

    @app.post("/bench/sync")
    async def bench_sync():
        await asyncio.to_thread(torch.cuda.synchronize)
        return {"ok": True}

    @app.get("/bench/checksum")
    async def bench_checksum():
        return await asyncio.to_thread(checksums, engine.model)

    print(f"engine device {next(engine.model.parameters()).device}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    os.environ.setdefault("RLPOST_TORCH_THREADS", "4")
    main()
