"""The reference engine's HTTP surface: SGLang's routes (generation, health and info, and the
control endpoints the trainer drives: pause/continue, weight updates, memory release).
Control endpoints (state changes) need the job token; generation and health do not, because
the router forwards them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from rlpost_rollout.auth import UNAUTHORIZED, token_ok
from rlpost_rollout.engine.core import Engine, decode_named_tensors
from rlpost_rollout.metrics import metrics_response
from rlpost_rollout.protocol import (
    AbortReq,
    ChatCompletionRequest,
    ContinueGenerationReqInput,
    DestroyWeightsUpdateGroupReqInput,
    GenerateReqInput,
    InitWeightsUpdateGroupReqInput,
    MemoryOccupationReqInput,
    PauseGenerationReqInput,
    SamplingParams,
    UpdateWeightFromDiskReqInput,
    UpdateWeightsFromDistributedReqInput,
    UpdateWeightsFromTensorReqInput,
    UpdateWeightVersionReqInput,
)

log = logging.getLogger("rlpost_rollout.engine")

# Paths the engine serves that the pinned SGLang does not (the contract test allows exactly
# these): SGLang 0.5.23 reports the weight version in /model_info only; older slime-era
# clients still read /get_weight_version.
RLPOST_EXTENSIONS = {("GET", "/get_weight_version")}


def create_app(engine: Engine, token: str | None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        engine.scheduler.start()
        yield
        engine.scheduler.stop()

    app = FastAPI(title="rlpost reference engine", lifespan=lifespan)

    def ok(message: str) -> dict[str, Any]:
        return {"success": True, "message": message}

    async def run_locked(fn, *args):
        return await asyncio.to_thread(engine.locked, fn, *args)

    # ---------------------------------------------------------------- health & info
    @app.get("/health")
    async def health():
        if engine.awaiting_weights:
            return JSONResponse(
                {"status": "waiting for the first weights from the trainer"}, status_code=503
            )
        return JSONResponse({})

    @app.get("/health_generate")
    async def health_generate():
        if not engine.scheduler.unpaused.is_set() or engine.released:
            return JSONResponse({})  # paused/released on purpose: alive, just not generating
        sp = SamplingParams(max_new_tokens=1, temperature=0.0)
        probe = [engine.tokenizer.probe_token_id]
        await engine.generate_one(probe, sp, False, -1, f"health-{uuid.uuid4()}")
        return JSONResponse({})

    def model_info() -> dict[str, Any]:
        cfg = engine.model.config
        return {
            "model_path": engine.model_path,
            "tokenizer_path": engine.model_path,
            "is_generation": True,
            "weight_version": engine.weight_version,
            "served_model_name": engine.model_path,
            "model_type": cfg.model_type,
            "architectures": list(cfg.architectures or [type(engine.model).__name__]),
        }

    @app.get("/get_model_info")
    async def get_model_info():
        return model_info()

    @app.get("/model_info")
    async def model_info_route():
        return model_info()

    @app.get("/server_info")
    async def server_info():
        return {
            "model_path": engine.model_path,
            "tp_size": 1,
            "dp_size": 1,
            "max_total_num_tokens": engine.max_positions * engine.scheduler.max_batch,
            "context_length": engine.max_positions,
            "version": "rlpost-reference",
            "weight_version": engine.weight_version,
            "startup_time": engine.started,
            "internal_states": [
                {
                    "memory": engine.memory(),
                    "ipc_payloads": {
                        "cached": len(engine.payloads),
                        "hits": engine.payloads.hits,
                        "misses": engine.payloads.misses,
                    },
                    "requests_total": engine.requests_total,
                    "batches": engine.scheduler.batches,
                    "generated_tokens": engine.scheduler.generated_tokens,
                    "paused": not engine.scheduler.unpaused.is_set(),
                    "released": sorted(engine.released),
                }
            ],
        }

    @app.get("/get_weight_version")
    async def get_weight_version():
        return {"weight_version": engine.weight_version}

    @app.get("/v1/loads")
    async def loads():
        return {
            "timestamp": time.time(),
            "loads": [
                {
                    "dp_rank": 0,
                    "num_running_reqs": len(engine.scheduler.running),
                    "num_waiting_reqs": engine.scheduler.queue_depth,
                }
            ],
        }

    @app.get("/metrics")
    async def metrics():
        return metrics_response(engine.registry)

    # ---------------------------------------------------------------- generation
    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(obj: GenerateReqInput):
        if obj.stream:
            raise HTTPException(400, "stream=true is not supported by the reference engine")
        if (obj.text is None) == (obj.input_ids is None):
            raise HTTPException(400, "give exactly one of text or input_ids")
        batch = isinstance(obj.text, list) or (
            obj.input_ids is not None and obj.input_ids and isinstance(obj.input_ids[0], list)
        )
        if batch:
            raise HTTPException(400, "batched /generate is not supported; send one per request")
        ids = obj.input_ids if obj.input_ids is not None else engine.encode(obj.text)
        rid = obj.rid or uuid.uuid4().hex
        return await engine.generate_one(
            ids, obj.sampling_params, obj.return_logprob, obj.logprob_start_len, rid
        )

    @app.post("/v1/chat/completions")
    async def chat(obj: ChatCompletionRequest):
        # The tokenizer's chat template when it has one (the char tokenizer has none: the
        # conversation is the concatenation of the messages' contents).
        if engine.tokenizer.has_chat_template:
            text = engine.tokenizer.render_chat([m.model_dump() for m in obj.messages])
            ids = engine.tokenizer.encode(text, add_bos=False)
        else:
            ids = engine.encode("".join(m.content for m in obj.messages))
        sp = SamplingParams(
            max_new_tokens=obj.max_completion_tokens or obj.max_tokens or 128,
            temperature=obj.temperature,
            top_p=obj.top_p,
            stop=obj.stop,
            sampling_seed=obj.seed,
        )
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        out = await engine.generate_one(ids, sp, obj.logprobs, -1, rid)
        meta = out["meta_info"]
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": out["text"]},
            "finish_reason": meta["finish_reason"]["type"],
        }
        if obj.logprobs:
            choice["logprobs"] = {
                "content": [
                    {"token": engine.tokenizer.decode([t], False), "logprob": lp}
                    for lp, t, _ in meta["output_token_logprobs"]
                ]
            }
        return {
            "id": rid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": obj.model or engine.model_path,
            "choices": [choice],
            "usage": {
                "prompt_tokens": meta["prompt_tokens"],
                "completion_tokens": meta["completion_tokens"],
                "total_tokens": meta["prompt_tokens"] + meta["completion_tokens"],
            },
            "metadata": {"weight_version": engine.weight_version},
        }

    # ---------------------------------------------------------------- control
    def control(path: str, body: type[BaseModel] | None = None, methods=("POST",)):
        """Register a token-protected control endpoint as a plain Starlette route.

        A weight update is one request per bucket, pipelined (rlpost.weightsync.pipeline):
        the engine's host time per request sits between the buckets' receives. A bearer
        check plus pydantic's JSON parser, without FastAPI's dependency and encoder layers,
        roughly halves it (docs/benchmarks-gpu.md). The handler gets the parsed body (or
        nothing) and returns a dict or a Response; an empty body is `{}`."""

        def register(handler):
            async def endpoint(request: Request) -> Response:
                if not token_ok(request, token):
                    return JSONResponse({"detail": UNAUTHORIZED}, status_code=401)
                if body is None:
                    result = await handler()
                else:
                    try:
                        obj = body.model_validate_json(await request.body() or b"{}")
                    except ValidationError as exc:
                        detail = json.loads(exc.json(include_url=False))
                        return JSONResponse({"detail": detail}, status_code=422)
                    result = await handler(obj)
                return result if isinstance(result, Response) else JSONResponse(result)

            app.add_route(path, endpoint, methods=list(methods))
            return handler

        return register

    @control("/flush_cache", methods=("GET", "POST"))
    async def flush_cache():
        # No prefix cache survives a batch, so there is nothing stale to drop.
        return {"success": True, "message": "Cache flushed."}

    @control("/pause_generation", PauseGenerationReqInput)
    async def pause_generation(obj: PauseGenerationReqInput):
        engine.scheduler.pause(abort_running=obj.mode == "abort")
        engine.update_failed = False
        return {"message": "Generation paused successfully.", "status": "ok"}

    @control("/continue_generation", ContinueGenerationReqInput)
    async def continue_generation(_obj: ContinueGenerationReqInput):
        if engine.buckets_since_pause:
            # The buckets' receives and copies were only enqueued on the GPU: wait for them
            # once here (not per bucket), so this answer means "the update is applied".
            if engine.on_gpu() and engine.sync_inline:
                # Copies from the trainer's memory (colocated): no host work is left to
                # overlap with; waiting here saves the thread hand-off (~0.1-0.2 ms).
                torch.cuda.synchronize()
            elif engine.on_gpu():
                await asyncio.to_thread(torch.cuda.synchronize)
            engine.sync_inline = False
            log.info(
                "weights updated",
                extra={
                    "kind": "distributed",
                    "buckets": engine.buckets_since_pause,
                    "weight_version": engine.weight_version,
                },
            )
            engine.buckets_since_pause = 0
            if not engine.update_failed and engine.awaiting_weights:
                engine.awaiting_weights = False
                log.info(
                    "first weights received: ready", extra={"weight_version": engine.weight_version}
                )
        engine.scheduler.resume()
        return {"message": "Generation continued successfully.", "status": "ok"}

    @control("/abort_request", AbortReq)
    async def abort_request(obj: AbortReq):
        n = engine.scheduler.abort(obj.abort_all, obj.rid)
        return {"success": True, "message": f"aborted {n} request(s)"}

    @control("/update_weight_version", UpdateWeightVersionReqInput)
    async def update_weight_version(obj: UpdateWeightVersionReqInput):
        if obj.abort_all_requests:
            engine.scheduler.abort(True, None)
        engine._set_version(obj.new_version)
        return {"success": True, "message": "ok", "new_version": obj.new_version}

    @control("/init_weights_update_group", InitWeightsUpdateGroupReqInput)
    async def init_weights_update_group(obj: InitWeightsUpdateGroupReqInput):
        try:
            # Blocks until the trainer joins the group: off the event loop, not under the lock.
            await asyncio.to_thread(
                engine._receiver().init_group,
                obj.master_address,
                obj.master_port,
                obj.rank_offset,
                obj.world_size,
                obj.group_name,
                obj.backend,
            )
        except Exception as exc:
            log.exception("init_weights_update_group failed")
            return JSONResponse({"success": False, "message": str(exc)}, status_code=400)
        return ok(f"joined group {obj.group_name} at rank {obj.rank_offset}")

    @control("/destroy_weights_update_group", DestroyWeightsUpdateGroupReqInput)
    async def destroy_weights_update_group(obj: DestroyWeightsUpdateGroupReqInput):
        try:
            await asyncio.to_thread(engine._receiver().destroy)
        except Exception as exc:
            return JSONResponse({"success": False, "message": str(exc)}, status_code=400)
        return ok(f"left group {obj.group_name}")

    async def apply_update(
        kind: str, fn, *args, version: str | None, abort: bool, inline: bool = False
    ):
        """inline: `fn` only enqueues GPU work (NCCL receive + copies; the host never waits
        on the wire), so it runs on the event loop when the model lock is free, without a
        thread hop: the next pipelined bucket's receive is posted sooner."""
        if abort:
            engine.scheduler.abort(True, None)
        started = time.monotonic()
        try:
            lock = engine.scheduler.model_lock
            if inline and lock.acquire(blocking=False):
                try:
                    fn(*args)
                finally:
                    lock.release()
            else:
                await run_locked(fn, *args)
        except Exception as exc:
            log.exception("weight update failed", extra={"kind": kind})
            engine.update_failed = True
            return JSONResponse({"success": False, "message": f"{kind}: {exc}"}, status_code=400)
        engine.m_sync.observe(time.monotonic() - started)
        engine._set_version(version)
        if kind == "tensor" and inline and engine.scheduler.unpaused.is_set():
            # Not between pause and continue: nobody will synchronise later, so the answer
            # waits until the copies are done ("applied", as SGLang answers).
            await asyncio.to_thread(torch.cuda.synchronize)
        elif kind in ("distributed", "tensor"):
            engine.sync_inline = engine.sync_inline or kind == "tensor"
            # One line per update (at continue), not one per bucket: buckets are the hot path.
            engine.buckets_since_pause += 1
            log.debug("bucket loaded", extra={"kind": kind, "weight_version": version})
        else:
            log.info("weights updated", extra={"kind": kind, "weight_version": version})
            engine.awaiting_weights = False
        return ok(f"weights updated ({kind}); weight_version={engine.weight_version}")

    @control("/update_weights_from_distributed", UpdateWeightsFromDistributedReqInput)
    async def update_weights_from_distributed(obj: UpdateWeightsFromDistributedReqInput):
        if not (len(obj.names) == len(obj.dtypes) == len(obj.shapes)):
            raise HTTPException(400, "names, dtypes and shapes must have the same length")
        receiver = engine._receiver()
        group = receiver.group
        direct_before = receiver.direct_buckets
        answer = await apply_update(
            "distributed",
            receiver.receive,
            obj.names,
            obj.dtypes,
            obj.shapes,
            obj.group_name,
            obj.load_format,
            version=obj.weight_version,
            abort=obj.abort_all_requests,
            # NCCL receives do not block the host; gloo's do (they stay off the loop).
            inline=group is not None and group.backend == "nccl",
        )
        engine.m_direct.inc(receiver.direct_buckets - direct_before)
        return answer

    @control("/update_weights_from_tensor", UpdateWeightsFromTensorReqInput)
    async def update_weights_from_tensor(obj: UpdateWeightsFromTensorReqInput):
        try:
            named = decode_named_tensors(
                obj.serialized_named_tensors, engine.payloads, obj.weight_version
            )
        except Exception as exc:
            raise HTTPException(400, f"serialized_named_tensors: {exc}") from exc
        receiver = engine._receiver()
        payload = obj.serialized_named_tensors[0]

        def load(named) -> None:
            # The same payload as in an earlier update (the same memory): what its first load
            # checked and resolved to one copy is that copy again.
            plan = engine.payloads.plan(payload)
            if plan is not None:
                receiver.copy_span(*plan)
                return
            plan = receiver.load_tensors(named)
            if plan is not None:
                engine.payloads.set_plan(payload, plan)

        return await apply_update(
            "tensor",
            load,
            named,
            version=obj.weight_version,
            abort=obj.abort_all_requests,
            # On a GPU the load only enqueues copies (synchronised at continue): run it on
            # the event loop when the model lock is free, no thread hop per bucket.
            inline=engine.on_gpu(),
        )

    @control("/update_weights_from_disk", UpdateWeightFromDiskReqInput)
    async def update_weights_from_disk(obj: UpdateWeightFromDiskReqInput):
        return await apply_update(
            "disk",
            engine.load_from_disk,
            obj.model_path,
            version=obj.weight_version,
            abort=obj.abort_all_requests,
        )

    @control("/release_memory_occupation", MemoryOccupationReqInput, ("GET", "POST"))
    async def release_memory_occupation(obj: MemoryOccupationReqInput):
        await run_locked(engine.release, set(obj.tags or ["weights", "kv_cache"]))
        return {}

    @control("/resume_memory_occupation", MemoryOccupationReqInput, ("GET", "POST"))
    async def resume_memory_occupation(obj: MemoryOccupationReqInput):
        await run_locked(engine.resume, set(obj.tags or ["weights", "kv_cache"]))
        return {}

    return app
