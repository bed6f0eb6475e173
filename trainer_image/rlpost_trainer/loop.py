"""The trainer's RL loop: batch s from the buffer -> GRPO step -> push weights s+1 -> tell the
buffer -> report -> checkpoint. Restart-safe: resumes from RLPOST_RESUME_STEP or the latest
checkpoint, and the buffer serves step s's batch idempotently.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from rlpost.api import RLPostTrainJob, Transport
from rlpost.models import build_tokenizer
from rlpost.weightsync import WeightSender
from rlpost_trainer import checkpoint
from rlpost_trainer.backend import TrainerBackend, make_backend
from rlpost_trainer.batch import Batch, batch_advantages, collate
from rlpost_trainer.buffer_client import BufferClient, BufferError
from rlpost_trainer.metrics import TrainerMetrics
from rlpost_trainer.progress import Progress

log = logging.getLogger("rlpost_trainer")


def load_job() -> RLPostTrainJob:
    path = Path(os.environ.get("RLPOST_CONFIG", "/etc/rlpost/job.yaml"))
    if not path.exists():
        raise SystemExit(f"job config {path} not found (set RLPOST_CONFIG)")
    return RLPostTrainJob.model_validate(yaml.safe_load(path.read_text()))


def sync_backend(job: RLPostTrainJob, device_is_cuda: bool) -> str:
    transport = job.spec.weight_sync.transport
    if transport == Transport.GLOO:
        return "gloo"
    if transport == Transport.NCCL:
        return "nccl"
    if transport == Transport.AUTO:
        return "nccl" if device_is_cuda else "gloo"
    raise SystemExit(
        f"weightSync.transport {transport!r} is not implemented by the trainer yet "
        "(use auto, nccl or gloo)"
    )


def checkpoint_root(job: RLPostTrainJob) -> Path:
    if job.spec.checkpoint.path:
        return Path(job.spec.checkpoint.path)
    return Path(os.environ.get("RLPOST_STATE_DIR", ".")) / "checkpoints"


def batch_stats(batch: Batch) -> dict[str, Any]:
    samples = batch.samples
    rewards = torch.tensor([s.reward for s in samples])
    versions = [g.weight_version for g in batch.groups]
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std(unbiased=False)),
        "samples": len(samples),
        "groups": len(batch.groups),
        "min_weight_version": min(versions),
        "max_staleness": batch.step - min(versions),
    }


class Trainer:
    def __init__(self, job: RLPostTrainJob, backend: TrainerBackend | None = None):
        self.job = job
        self.spec = job.spec
        self.name = os.environ.get("RLPOST_JOB_NAME") or job.metadata.name
        self.tokenizer = build_tokenizer(self.spec.model)
        self.backend = backend or make_backend(self.spec)
        self.backend.setup(self.spec, self.tokenizer.vocab_size)
        token = os.environ.get("RLPOST_TOKEN") or None
        buffer_url = os.environ.get("RLPOST_BUFFER_URL", f"http://{self.name}-buffer:8000")
        self.buffer = BufferClient(buffer_url, token)
        urls = [u for u in os.environ.get("RLPOST_ENGINE_URLS", "").split(",") if u.strip()]
        self.sender = None
        if urls and self.backend.is_sync_rank:
            on_cuda = getattr(self.backend, "device", torch.device("cpu")).type == "cuda"
            self.sender = WeightSender(
                urls,
                token=token,
                backend=sync_backend(job, on_cuda),
                bucket_mb=self.spec.weight_sync.bucket_mb,
                # Async runs keep the requests generated ahead (see WeightSender).
                pause_mode="in_place" if self.spec.rollout.max_staleness > 0 else "abort",
            )
        self.ckpt_root = checkpoint_root(job)
        self.metrics = TrainerMetrics(self.name)
        self.progress = Progress(self.name)
        self.batch_timeout_s = float(os.environ.get("RLPOST_BATCH_TIMEOUT_S", "900"))

    # ------------------------------------------------------------------ resume

    def resume_step(self) -> int:
        env = os.environ.get("RLPOST_RESUME_STEP")
        if env not in (None, ""):
            return int(env)
        return checkpoint.latest_step(self.ckpt_root) or 0

    def restore(self, step: int) -> None:
        state = checkpoint.load(self.ckpt_root, step)
        self.backend.load_state_dict(state["backend"])
        # Engines may be fresh (random init): give them the checkpoint's weights first, so
        # nothing the buffer generates from now on uses weights older than version `step`.
        self.push_weights(step)
        answer = self.buffer.resume(step, state["cursor"])
        self.buffer.post_weight_version(step)
        log.info(
            "resumed from checkpoint",
            extra={"step": step, "cursor": answer.get("cursor"), "saved_cursor": state["cursor"]},
        )
        self.progress.update(step=step, weightVersion=step, lastCheckpointStep=step)

    # ------------------------------------------------------------------ one step

    def push_weights(self, version: int) -> float:
        if self.sender is None:
            return 0.0
        seconds = self.sender.push(self.backend.named_hf_weights(), version)
        self.metrics.sync.observe(seconds)
        return seconds

    def train_one(self, step: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        batch = self.buffer.batch(step, self.batch_timeout_s)
        if batch.step != step:
            raise BufferError(f"asked the buffer for step {step}, got step {batch.step}")
        t_batch = time.perf_counter()
        tb = collate(batch, self.tokenizer.pad_token_id)
        advantages = batch_advantages(tb) * self.spec.algorithm.advantage_sign
        stats = self.backend.train_step(tb, advantages)
        t_train = time.perf_counter()
        sync_s = self.push_weights(step + 1)
        self.buffer.post_weight_version(step + 1)
        t_end = time.perf_counter()
        record = {
            "step": step,
            "weight_version": step + 1,
            **batch_stats(batch),
            "loss": stats.get("loss"),
            "pg_loss": stats.get("pg_loss"),
            "kl": stats.get("kl") if self.spec.algorithm.kl_coef > 0 else None,
            "kl_rollout": stats.get("kl_rollout"),
            "clip_fraction": stats.get("clip_fraction"),
            "grad_norm": stats.get("grad_norm"),
            "response_tokens": tb.response_tokens,
            "tokens_per_second": tb.response_tokens / max(t_end - t0, 1e-9),
            "batch_wait_s": t_batch - t0,
            "train_s": t_train - t_batch,
            "sync_ms": sync_s * 1000.0,
            "step_s": t_end - t0,
        }
        self.metrics.step.set(step)
        self.metrics.reward.set(record["reward_mean"])
        self.metrics.tps.set(record["tokens_per_second"])
        return record

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        self.metrics.serve()
        self.buffer.wait_ready()
        start = self.resume_step()
        if start > 0:
            self.restore(start)
        interval = self.spec.checkpoint.interval_steps
        last_ckpt = start if start > 0 else None
        started = time.time()
        for step in range(start, self.spec.steps):
            record = self.train_one(step)
            record["elapsed_s"] = time.time() - started
            nxt = step + 1
            if nxt % interval == 0 or nxt == self.spec.steps:
                cursor = self.buffer.checkpoint_cursor(nxt)
                checkpoint.save(self.ckpt_root, nxt, self.backend.state_dict(), cursor)
                last_ckpt = nxt
                record["checkpoint"] = nxt
            self.progress.update(record, step=nxt, weightVersion=nxt, lastCheckpointStep=last_ckpt)
            log.info("step", extra=record)
        self.progress.update(done=True)
        log.info("training finished", extra={"steps": self.spec.steps})

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
        self.buffer.close()
