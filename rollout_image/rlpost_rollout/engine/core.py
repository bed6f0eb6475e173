"""The reference engine's state: a torch model built from the job spec, its weight version and
memory state, and the batching scheduler (scheduler.py / generator.py). Weight updates are
applied through rlpost.weightsync.receiver, exactly as the trainer drives SGLang.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import suppress
from typing import Any

import torch
from fastapi import HTTPException
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rlpost.models import build_model, build_tokenizer
from rlpost.weightsync.packed import pack_parameters
from rlpost_rollout import config
from rlpost_rollout.generator import Generator, GenRequest, GenResult
from rlpost_rollout.protocol import (
    SamplingParams,
)
from rlpost_rollout.scheduler import BEFORE_PREFILL, Scheduler

log = logging.getLogger("rlpost_rollout.engine")


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
