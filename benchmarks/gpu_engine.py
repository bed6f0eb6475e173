"""The reference engine (rlpost_rollout.engine, unchanged) plus two benchmark-only routes.

    POST /bench/sync      torch.cuda.synchronize(): answers once every queued GPU op (the
                          weight loads included) has finished; timing ends after it.
    GET  /bench/checksum  per-parameter float64 sums, to check the pushed bytes landed.
    GET  /bench/stats     how many flattened buckets went straight into the weights.
    GET  /bench/timeline  (path, arrived, answered) of every other request since the last
                          call, in time.perf_counter() seconds (CLOCK_MONOTONIC: the same
                          clock as the trainer's on this host); clears the list.

--staged: give every parameter its own storage again (the engine packs them), so each
bucket is received into a staging buffer and copied: the cost the packing removes.

Everything else is the engine's own app: the same endpoints the trainer drives.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import deque

import rlpost_rollout.engine.core as engine_module
import torch
import uvicorn
from rlpost_rollout import config
from rlpost_rollout.engine import Engine, create_app

from rlpost.models import DTYPES, TINY_DEFAULTS


def fast_build_model(source, vocab_size: int, seed: int = 0) -> torch.nn.Module:
    """rlpost.models.build_model's random-init model, built directly in its dtype on the GPU
    (a 7B model in seconds, no fp32 copy on the CPU). Benchmark only: the init differs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = DTYPES[source.dtype]
    cfg = LlamaConfig(**{**TINY_DEFAULTS, **source.config, "vocab_size": vocab_size})
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = 0, 1, 2
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.to(dtype)


def checksums(model: torch.nn.Module) -> dict[str, float]:
    with torch.no_grad():
        return {n: float(p.double().sum()) for n, p in model.named_parameters()}


class Timeline:
    """ASGI wrapper: when each request reached the app and when its answer started."""

    def __init__(self, app):
        self.app = app
        self.events: deque = deque(maxlen=8192)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith("/bench"):
            return await self.app(scope, receive, send)
        arrived = time.perf_counter()

        async def timed_send(message):
            if message["type"] == "http.response.start":
                self.events.append((scope["path"], arrived, time.perf_counter()))
            await send(message)

        await self.app(scope, receive, timed_send)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--staged", action="store_true")
    args = parser.parse_args()
    job = config.load_job(None)
    engine_module.build_model = fast_build_model
    engine = Engine(job)
    if args.staged:
        with torch.no_grad():
            for p in engine.model.parameters():
                p.data = p.data.clone()
    app = create_app(engine, config.token())

    @app.post("/bench/sync")
    async def bench_sync():
        if torch.cuda.is_available():
            await asyncio.to_thread(torch.cuda.synchronize)
        return {"ok": True}

    @app.get("/bench/checksum")
    async def bench_checksum():
        return await asyncio.to_thread(checksums, engine.model)

    timeline = Timeline(app)

    @app.get("/bench/timeline")
    async def bench_timeline():
        events = list(timeline.events)
        timeline.events.clear()
        return events

    @app.get("/bench/stats")
    async def bench_stats():
        receiver = engine.receiver
        return {"direct_buckets": receiver.direct_buckets if receiver else 0}

    print(f"engine device {next(engine.model.parameters()).device}", flush=True)
    uvicorn.run(timeline, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    os.environ.setdefault("RLPOST_TORCH_THREADS", "4")
    main()
