"""Reference rollout engine: SGLang's HTTP contract served by a torch model on CPU or GPU.

`python -m rlpost_rollout.engine --port P` reads the job spec ($RLPOST_CONFIG), builds the
model and tokenizer with rlpost.models, and generates with its *current* weights (batched,
KV cache; see scheduler.py / generator.py). Weight updates go through
rlpost.weightsync.receiver, exactly as the trainer drives SGLang. Control endpoints (state
changes) need the job token; generation and health do not, because the router forwards them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager, suppress
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, ValidationError

from rlpost.logs import setup_logging
from rlpost.models import build_model, build_tokenizer, model_problems
from rlpost.refuse import refuse_spec
from rlpost.weightsync.packed import pack_parameters
from rlpost_rollout import config
from rlpost_rollout.auth import UNAUTHORIZED, token_ok
from rlpost_rollout.generator import Generator, GenRequest, GenResult
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
from rlpost_rollout.scheduler import BEFORE_PREFILL, Scheduler

log = logging.getLogger("rlpost_rollout.engine")

# Paths the engine serves that the pinned SGLang does not (the contract test allows exactly
# these): SGLang 0.5.23 reports the weight version in /model_info only; older slime-era
# clients still read /get_weight_version.
RLPOST_EXTENSIONS = {("GET", "/get_weight_version")}


class Engine:
    """The model, its weight version and memory state, and the batching scheduler."""

    def __init__(self, job, max_batch: int = 32):
        spec = job.spec
        self.job_name = config.job_name(job)
        self.model_path = spec.model.path or "rlpost:config"
        self.tokenizer = build_tokenizer(spec.model)
        self.model = build_model(spec.model, self.tokenizer.vocab_size, seed=spec.seed).eval()
        # Same init as the trainer (built on CPU), then onto this pod's GPU when it has one.
        if spec.rollout.gpus_per_engine > 0 and torch.cuda.is_available():
            self.model = self.model.to("cuda")
        # Back to back in HF order: flattened buckets land straight in the weights.
        pack_parameters(self.model)
        if self.on_gpu():  # the unpacked copies go back to the driver, not the cache
            torch.cuda.empty_cache()
        # What resume_memory_occupation re-allocates after a release freed the storage.
        self._shapes = {n: tuple(p.shape) for n, p in self.model.named_parameters()}
        self.max_positions = int(self.model.config.max_position_embeddings)
        self.generator = Generator(self.model, self.tokenizer, self.max_positions)
        self.scheduler = Scheduler(
            self.generator, max_batch=max_batch, version=lambda: self.weight_version
        )
        self.weight_version = os.environ.get("RLPOST_WEIGHT_VERSION", "0")
        self.released: set[str] = set()
        # Released weights on a GPU: a pinned host copy, allocated once, restored on resume.
        self._backup: torch.Tensor | None = None
        # /update_weights_from_tensor payloads a colocated trainer repeats every update: each
        # IPC handle is opened once (rlpost.weightsync.tensor_ipc.PayloadCache).
        from rlpost.weightsync.tensor_ipc import PayloadCache

        self.payloads = PayloadCache(decode_payload)
        self.receiver = None
        self.buckets_since_pause = 0  # /update_weights_from_distributed calls not yet synced
        self.sync_inline = False  # those were /update_weights_from_tensor copies (colocated)
        self.update_failed = False  # a bucket of the update since the last pause was refused
        # In a cluster (RLPOST_WAIT_FOR_WEIGHTS=1, set by the operator) the engine is not
        # ready until the trainer has pushed it a full set of weights: /health answers 503,
        # so the pod is not Ready and the router does not send it requests before that.
        self.awaiting_weights = os.environ.get("RLPOST_WAIT_FOR_WEIGHTS") == "1"
        self.requests_total = 0
        self.started = time.time()
        self.registry = CollectorRegistry()
        labels = ["job"]
        self.m_requests = Counter(
            "rlpost_engine_requests", "generate requests served", labels, registry=self.registry
        ).labels(self.job_name)
        self.m_tokens = Counter(
            "rlpost_engine_generated_tokens", "tokens generated", labels, registry=self.registry
        ).labels(self.job_name)
        self.m_tps = Gauge(
            "rlpost_tokens_per_second",
            "generated tokens per busy second",
            labels,
            registry=self.registry,
        ).labels(self.job_name)
        self.m_version = Gauge(
            "rlpost_engine_weight_version", "live weight version", labels, registry=self.registry
        ).labels(self.job_name)
        self.m_sync = Histogram(
            "rlpost_weight_sync_seconds",
            "time to apply one weight update on the engine",
            labels,
            registry=self.registry,
        ).labels(self.job_name)
        self.m_direct = Counter(
            "rlpost_weight_sync_direct_buckets",
            "flattened buckets received straight into the weights (no staging copy)",
            labels,
            registry=self.registry,
        ).labels(self.job_name)
        self._set_version(self.weight_version)

    def _set_version(self, version: str | None) -> None:
        if version is None:
            return
        self.weight_version = version
        with suppress(ValueError):
            self.m_version.set(float(version))

    # ------------------------------------------------------------------ generation

    def to_gen_request(self, ids: list[int], sp: SamplingParams, logprob_start: int) -> GenRequest:
        stop = [sp.stop] if isinstance(sp.stop, str) else list(sp.stop or [])
        req = GenRequest(
            input_ids=ids,
            max_new_tokens=sp.max_new_tokens,
            temperature=sp.temperature,
            top_p=sp.top_p,
            top_k=sp.top_k,
            min_new_tokens=sp.min_new_tokens,
            stop=stop,
            stop_token_ids=set(sp.stop_token_ids or []),
            ignore_eos=sp.ignore_eos,
            seed=sp.sampling_seed,
            logprob_start_len=logprob_start,
        )
        self.generator.check(req)
        return req

    def render(
        self, rid: str, req: GenRequest, res: GenResult, sp: SamplingParams, logprob: bool
    ) -> dict[str, Any]:
        version = res.weight_version or self.weight_version
        if res.finish_reason.get("message") == BEFORE_PREFILL:  # as SGLang: no tokens, no logprobs
            meta = {"id": rid, "finish_reason": res.finish_reason, "prompt_tokens": 0}
            meta |= {"completion_tokens": 0, "cached_tokens": 0, "weight_version": version}
            return {"text": "", "output_ids": [], "meta_info": meta}
        text = self.tokenizer.decode(res.output_ids, skip_special_tokens=sp.skip_special_tokens)
        matched = res.finish_reason.get("matched")
        if isinstance(matched, str) and not sp.no_stop_trim and text.endswith(matched):
            text = text[: len(text) - len(matched)]
        meta: dict[str, Any] = {
            "id": rid,
            "prompt_tokens": len(req.input_ids),
            "completion_tokens": len(res.output_ids),
            "cached_tokens": 0,
            "finish_reason": res.finish_reason,
            "weight_version": version,  # the weights that made these tokens
        }
        if logprob:
            meta["output_token_logprobs"] = [
                [lp, tok, None] for lp, tok in zip(res.output_logprobs, res.output_ids, strict=True)
            ]
            if req.logprob_start_len >= 0:
                start = min(req.logprob_start_len, len(req.input_ids))
                meta["input_token_logprobs"] = [
                    [lp, tok, None]
                    for lp, tok in zip(res.input_logprobs, req.input_ids[start:], strict=True)
                ]
        return {"text": text, "output_ids": res.output_ids, "meta_info": meta}

    async def generate_one(
        self, ids: list[int], sp: SamplingParams, logprob: bool, start: int, rid: str
    ) -> dict[str, Any]:
        if self.released & {"weights", "all"} and self.scheduler.unpaused.is_set():
            # Paused (a colocated trainer is training): the request waits in the queue for
            # resume + continue instead.
            raise HTTPException(503, "weights are released (call /resume_memory_occupation)")
        try:
            req = self.to_gen_request(ids, sp, start if logprob else -1)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        self.requests_total += 1
        self.m_requests.inc()
        res = await self.scheduler.submit(req, rid)
        self.m_tokens.inc(len(res.output_ids))
        if self.scheduler.busy_seconds > 0:
            self.m_tps.set(self.scheduler.generated_tokens / self.scheduler.busy_seconds)
        return self.render(rid, req, res, sp, logprob)

    def encode(self, text: str) -> list[int]:
        try:
            return self.tokenizer.encode(text)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc

    # ------------------------------------------------------------------ weights

    def _receiver(self):
        if self.receiver is None:
            from rlpost.weightsync.receiver import WeightReceiver

            self.receiver = WeightReceiver(self.model)
        return self.receiver

    def locked(self, fn, *args):
        """Run `fn` with generation stopped between batches (the scheduler's model lock)."""
        with self.scheduler.model_lock:
            return fn(*args)

    def load_from_disk(self, path: str) -> None:
        from transformers import AutoModelForCausalLM

        src = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        state = src.state_dict()
        missing = [n for n, _ in self.model.named_parameters() if n not in state]
        if missing:
            raise ValueError(f"{path}: missing parameters {missing[:5]}")
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(state[name].to(p.dtype))

    def on_gpu(self) -> bool:
        return next(self.model.parameters()).is_cuda

    @torch.no_grad()
    def release(self, tags: set[str]) -> None:
        """Free GPU memory for a colocated trainer (SGLang's memory saver, with its weights
        CPU backup): "weights" copies the weights to pinned host memory and frees their
        device storage (shapes kept); resume restores them as they were. "kv_cache": the
        engine keeps no cache between batches; what its allocator holds goes back to the
        driver either way. On CPU nothing is freed (the weights stay; generation is refused
        until resume, as on a GPU)."""
        if "weights" in tags and "weights" not in self.released and self.on_gpu():
            params = list(self.model.parameters())
            total = sum(p.numel() * p.element_size() for p in params)
            if self._backup is None or self._backup.numel() != total:
                self._backup = torch.empty(total, dtype=torch.uint8, pin_memory=True)
            at = 0
            for p in params:
                n = p.numel() * p.element_size()
                self._backup[at : at + n].copy_(p.data.reshape(-1).view(torch.uint8), True)
                at += n
            torch.cuda.synchronize()
            for p in params:
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        if "weights" in tags:
            # Close the trainer's IPC mappings too: nothing of its memory stays mapped here
            # while it trains (the next update opens the handles again, once).
            self.payloads.clear()
        self.released |= tags
        if self.on_gpu():
            torch.cuda.synchronize()
            # cuBLAS keeps a workspace per handle in the caching allocator; it comes back on
            # the next matmul after resume.
            clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
            if clear is not None:
                clear()
            torch.cuda.empty_cache()

    @torch.no_grad()
    def resume(self, tags: set[str]) -> None:
        if "weights" in tags and "weights" in self.released and self._backup is not None:
            device = next(self.model.parameters()).device
            for p in self.model.parameters():  # uninitialised, then filled from the backup
                p.data = torch.empty(0, dtype=p.dtype, device=device)
            pack_parameters(self.model, shapes=self._shapes, fill=False)
            at = 0
            for p in self.model.parameters():
                n = p.numel() * p.element_size()
                p.data.reshape(-1).view(torch.uint8).copy_(self._backup[at : at + n], True)
                at += n
            torch.cuda.synchronize()
        self.released -= tags

    def memory(self) -> dict[str, int]:
        """The engine's device memory in its allocator, bytes (0 on CPU)."""
        if not self.on_gpu():
            return {"allocated": 0, "reserved": 0}
        return {
            "allocated": torch.cuda.memory_allocated(),
            "reserved": torch.cuda.memory_reserved(),
        }


def decode_payload(payload: str) -> list[tuple[str, torch.Tensor]]:
    """One ForkingPickler payload: a list (or dict) of (name, tensor)."""
    from rlpost.weightsync.tensor_ipc import deserialize_named_tensors

    named = deserialize_named_tensors(payload)
    if isinstance(named, dict):
        named = list(named.items())
    return [(str(n), t) for n, t in named]


def decode_named_tensors(
    serialized: list[str], cache=None, version: str | None = None
) -> list[tuple[str, torch.Tensor]]:
    """SGLang's serialized_named_tensors: one ForkingPickler payload per TP rank (we have one).
    `cache` (a PayloadCache): a payload seen in the last update is not decoded again."""
    if len(serialized) != 1:
        raise ValueError(f"the reference engine has one TP rank; got {len(serialized)} payloads")
    if cache is None:
        return decode_payload(serialized[0])
    return cache.get(serialized[0], version)


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--config", default=None, help="job.yaml (default $RLPOST_CONFIG)")
    parser.add_argument("--max-batch", type=int, default=32)
    args = parser.parse_args(argv)
    setup_logging("engine")
    torch.set_num_threads(int(os.environ.get("RLPOST_TORCH_THREADS", "1")))
    job = config.load_job(args.config)
    device = "cuda" if job.spec.rollout.gpus_per_engine > 0 and torch.cuda.is_available() else "cpu"
    problems = model_problems(job.spec.model, device=device)
    if problems:
        refuse_spec("engine", "; ".join(problems))
    engine = Engine(job, max_batch=args.max_batch)
    app = create_app(engine, config.token())
    log.info("engine ready", extra={"port": args.port, "weight_version": engine.weight_version})
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
