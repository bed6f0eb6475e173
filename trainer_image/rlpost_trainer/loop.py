"""The trainer's RL loop: batch s from the buffer -> GRPO step -> push weights s+1 -> tell the
buffer -> eval (spec.eval, every intervalSteps) -> report -> checkpoint. Restart-safe: resumes
from RLPOST_RESUME_STEP or the latest checkpoint, and the buffer serves step s's batch
idempotently.

With several ranks (ranks.py) every rank runs this loop; global rank 0 alone talks to the
buffer (it pulls each batch once and hands it to the others), pushes weights, reports
progress and writes the replicated checkpoint state; every rank trains its rows of the batch
and loads the checkpoint on resume.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from rlpost.api import RLPostTrainJob, Transport
from rlpost.models import build_tokenizer
from rlpost.storage import checkpoint_dir, resolve_job_paths
from rlpost.weightsync.colocated import release_engines, resume_engines
from rlpost_trainer import checkpoint
from rlpost_trainer.algorithms import batch_advantages
from rlpost_trainer.backend import TrainerBackend, make_backend
from rlpost_trainer.batch import Batch, TrainBatch, collate
from rlpost_trainer.buffer_client import BatchNotReady, BufferClient, BufferError
from rlpost_trainer.engines import engine_set_from_env
from rlpost_trainer.metrics import TrainerMetrics
from rlpost_trainer.progress import Progress
from rlpost_trainer.ranks import Ranks, control_group, init_process_group
from rlpost_trainer.resume import resume_point

log = logging.getLogger("rlpost_trainer")
# A backend that trains a value model (ppo: value_model.py) reports these per step.
CRITIC_STATS = (
    "value_loss", "value_mean", "returns_mean", "explained_variance", "critic_grad_norm",
)  # fmt: skip


def load_job() -> RLPostTrainJob:
    path = Path(os.environ.get("RLPOST_CONFIG", "/etc/rlpost/job.yaml"))
    if not path.exists():
        raise SystemExit(f"job config {path} not found (set RLPOST_CONFIG)")
    # Model and data paths point into their PVC mounts in a cluster (rlpost.storage).
    return resolve_job_paths(RLPostTrainJob.model_validate(yaml.safe_load(path.read_text())))


def colocated(job: RLPostTrainJob) -> bool:
    """Worker pods of colocated mode, or `rlpost run` with mode: colocated: the engines
    share this trainer's GPUs (or host); weights go by IPC, engines free memory to train."""
    return (os.environ.get("RLPOST_MODE") or str(job.spec.mode)) == "colocated"


def sync_backend(job: RLPostTrainJob, device_is_cuda: bool) -> str:
    transport = job.spec.weight_sync.transport
    if colocated(job) and transport in (Transport.AUTO, Transport.IPC):
        return "ipc"  # rlpost.weightsync.colocated: CUDA IPC, or shared memory on CPU
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
    return checkpoint_dir(job.spec)


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


class NoProgress:
    """Progress on a rank other than global rank 0: nothing is reported."""

    def update(self, record: dict[str, Any] | None = None, **fields: Any) -> None:
        pass


class Trainer:
    def __init__(self, job: RLPostTrainJob, backend: TrainerBackend | None = None):
        self.job = job
        self.spec = job.spec
        self.name = os.environ.get("RLPOST_JOB_NAME") or job.metadata.name
        self.tokenizer = build_tokenizer(self.spec.model)
        self.batch_timeout_s = float(os.environ.get("RLPOST_BATCH_TIMEOUT_S", "900"))
        # Ranks wait for rank 0's batch in a collective: allow the buffer's wait and more.
        group_timeout_s = self.batch_timeout_s + 1800
        self.ranks = Ranks.from_env()
        on_cuda = torch.cuda.is_available() and self.spec.trainer.gpus_per_pod > 0
        # NCCL: collectives only inside a train step, where every rank is (a stuck one fails
        # the gang in 10 minutes); gloo on the CPU is also where ranks wait for the batch.
        init_process_group(self.ranks, on_cuda, 600.0 if on_cuda else group_timeout_s)
        self.ctrl = control_group(group_timeout_s)
        self.backend = backend or make_backend(self.spec)
        self.backend.setup(self.spec, self.tokenizer.vocab_size)
        token = os.environ.get("RLPOST_TOKEN") or None
        self.token = token
        self.colocated = colocated(job)
        buffer_url = os.environ.get("RLPOST_BUFFER_URL", f"http://{self.name}-buffer:8000")
        self.buffer = BufferClient(buffer_url, token)
        # RLPOST_ENGINE_URLS (rlpost run) or the engines' headless Service (a cluster): one
        # rule for engines that come and go (rlpost_trainer.engines).
        self.engines = None
        if self.backend.is_sync_rank:
            on_cuda = getattr(self.backend, "device", torch.device("cpu")).type == "cuda"
            self.engines = engine_set_from_env(job, token, sync_backend(job, on_cuda))
        self.engine_check_s = float(os.environ.get("RLPOST_ENGINE_CHECK_S", "5"))
        self.ckpt_root = checkpoint_root(job)
        self.metrics = TrainerMetrics(self.name)
        self.progress = Progress(self.name) if self.ranks.is_main else NoProgress()

    # ------------------------------------------------------------------ resume

    def resume_step(self) -> int:
        """Rank 0's answer, on every rank."""
        step = 0
        if self.ranks.is_main:
            env = os.environ.get("RLPOST_RESUME_STEP")
            requested = int(env) if env not in (None, "") else None
            step, why = resume_point(self.ckpt_root, requested)
            if why:  # that checkpoint is missing: an older one, or a fresh start
                log.warning(why, extra={"requested": requested, "step": step})
                if step == 0:  # the buffer applied RLPOST_RESUME_STEP at its start
                    self.buffer.resume(0, 0)
        return self.from_main(step)

    def from_main(self, obj: Any) -> Any:
        """Global rank 0's `obj` on every rank (itself when there is one rank)."""
        if self.ctrl is None:
            return obj
        box = [obj if self.ranks.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.ctrl)
        return box[0]

    def barrier(self) -> None:
        if self.ctrl is not None:
            dist.barrier(group=self.ctrl)

    def restore(self, step: int) -> None:
        """Every rank loads the checkpoint (the replicated state, and its own shard if the
        backend's state is sharded); rank 0 then brings engines and buffer to step k."""
        state = checkpoint.load(self.ckpt_root, step)
        shard = getattr(self.backend, "shard_key", None)
        if shard is not None:
            self.backend.load_state_dict(checkpoint.load_shard(self.ckpt_root, step, shard))
        else:
            self.backend.load_state_dict(state["backend"])
        if not self.ranks.is_main:
            return
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
        if self.engines is None:
            return 0.0
        seconds = self.engines.push(self.backend.named_hf_weights, version)
        self.metrics.sync.observe(seconds)
        return seconds

    def wait_batch(self, step: int) -> Batch:
        """GET /batch in slices; in between, engines that are new, replaced or restarted
        get the live weights (version `step`): such an engine is not Ready before that, and
        the batch may need it."""
        if self.engines is None:
            return self.buffer.batch(step, self.batch_timeout_s)
        deadline = time.monotonic() + self.batch_timeout_s
        while True:
            seconds = self.engines.catch_up(self.backend.named_hf_weights, step)
            if seconds is not None:
                self.metrics.sync.observe(seconds)
            left = deadline - time.monotonic()
            try:
                return self.buffer.batch(step, max(1.0, min(self.engine_check_s, left)))
            except BatchNotReady:
                if time.monotonic() >= deadline:
                    raise

    def next_batch(self, step: int) -> tuple[TrainBatch, torch.Tensor, dict[str, Any] | None]:
        """Step's batch, its advantages and stats on every rank. Rank 0 alone pulls it (the
        buffer serves each step once to one trainer) and hands it to the others; the
        advantages are normalised over whole groups before any rank takes its rows."""
        payload = None
        if self.ranks.is_main:
            batch = self.wait_batch(step)
            if batch.step != step:
                raise BufferError(f"asked the buffer for step {step}, got step {batch.step}")
            tb = collate(batch, self.tokenizer.pad_token_id)
            advantages = batch_advantages(tb, self.spec)
            payload = (tb, advantages, batch_stats(batch))
        tb, advantages, stats = self.from_main(payload)
        return tb, advantages, stats if self.ranks.is_main else None

    def train_one(self, step: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        tb, advantages, bstats = self.next_batch(step)
        t_batch = time.perf_counter()
        engine_urls: list[str] = []
        if self.colocated and self.engines is not None:
            engine_urls = self.engines.members or sorted(self.engines.present())
        release_s = resume_s = 0.0
        if engine_urls:  # colocated: the engines pause and free their GPU memory to train
            release_s = release_engines(engine_urls, self.token)
        if self.colocated:
            self.barrier()  # no rank trains before rank 0's engines freed their memory
        t_release = time.perf_counter()
        stats = self.backend.train_step(tb, advantages)
        t_train = time.perf_counter()
        if engine_urls:
            resume_s = resume_engines(engine_urls, self.token)
        if not self.ranks.is_main:
            return {"step": step, "loss": stats.get("loss")}
        sync_s = self.push_weights(step + 1)
        self.buffer.post_weight_version(step + 1)
        t_end = time.perf_counter()
        tis = self.spec.algorithm.tis_cap is not None
        record = {
            "step": step,
            "weight_version": step + 1,
            **bstats,
            "loss": stats.get("loss"),
            "pg_loss": stats.get("pg_loss"),
            "kl": stats.get("kl") if self.spec.algorithm.kl_coef > 0 else None,
            "kl_rollout": stats.get("kl_rollout"),
            "logprob_mismatch": stats.get("logprob_mismatch"),
            "tis_weight_mean": stats.get("tis_weight_mean") if tis else None,
            "tis_clip_fraction": stats.get("tis_clip_fraction") if tis else None,
            "clip_fraction": stats.get("clip_fraction"),
            "grad_norm": stats.get("grad_norm"),
            **({k: stats.get(k) for k in CRITIC_STATS} if "value_loss" in stats else {}),
            "response_tokens": tb.response_tokens,
            "tokens_per_second": tb.response_tokens / max(t_end - t0, 1e-9),
            "batch_wait_s": t_batch - t0,
            "train_s": t_train - t_release,
            "release_ms": release_s * 1000.0,
            "resume_ms": resume_s * 1000.0,
            "sync_ms": sync_s * 1000.0,
            "step_s": t_end - t0,
        }
        self.metrics.step.set(step)
        self.metrics.reward.set(record["reward_mean"])
        self.metrics.tps.set(record["tokens_per_second"])
        if record["logprob_mismatch"] is not None:
            self.metrics.mismatch.set(record["logprob_mismatch"])
        return record

    def evaluate(self, step: int) -> dict[str, Any]:
        """spec.eval after step `step`'s weight push, when it is an intervalSteps-th step or
        the last: the buffer's POST /eval answer as steps.jsonl fields (rank 0 only)."""
        ev, nxt = self.spec.eval, step + 1
        if ev is None or not (nxt % ev.interval_steps == 0 or nxt == self.spec.steps):
            return {}
        res = self.buffer.evaluate(step)
        for kind, key in (
            ("greedy", "greedy_reward_mean"),
            ("pass_at_k", "pass_at_k"),
            ("mean_at_k", "mean_reward_at_k"),
        ):
            self.metrics.eval_reward.labels(self.name, kind).set(res[key])
        return {
            "eval_greedy": res["greedy_reward_mean"],
            "eval_pass_at_k": res["pass_at_k"],
            "eval_mean_at_k": res["mean_reward_at_k"],
            "eval_k": res["k"],
            "eval_prompts": res["n_prompts"],
            "eval_weight_version": res["weight_version"],
            "eval_s": res["seconds"],
        }

    # ------------------------------------------------------------------ the loop

    def save_checkpoint(self, step: int) -> None:
        """Rank 0 writes `step-k/state.pt` (the cursor, and the backend state when it is the
        same on every rank, as data parallel's is); a backend with sharded state (Megatron
        TP/PP: `shard_key`) has each shard written once, into the same directory, before
        rank 0 completes it."""
        main = self.ranks.is_main
        cursor = self.buffer.checkpoint_cursor(step) if main else None
        shard = getattr(self.backend, "shard_key", None)
        if shard is None:
            if main:
                checkpoint.save(self.ckpt_root, step, self.backend.state_dict(), cursor)
            return
        tmp = checkpoint.begin(self.ckpt_root, step) if main else None
        self.barrier()
        if getattr(self.backend, "writes_shard", True):
            checkpoint.save_shard(self.ckpt_root, step, shard, self.backend.state_dict())
        self.barrier()
        if main:
            checkpoint.save(self.ckpt_root, step, None, cursor, tmp=tmp)
        self.barrier()

    def export_hf(self, step: int) -> str | None:
        """The policy after `step` steps as a HF model directory (hf_export.py), written by
        the sync rank (it holds the full HF weights)."""
        if not self.backend.is_sync_rank:
            return None
        from rlpost_trainer.hf_export import hf_dir, save_hf

        out = save_hf(
            self.backend.named_hf_weights(),
            self.spec.model,
            hf_dir(self.ckpt_root, step),
            self.tokenizer.vocab_size,
        )
        log.info("HF export written", extra={"step": step, "path": str(out)})
        return str(out)

    def run(self) -> None:
        if self.ranks.is_main:
            self.metrics.serve()
            self.buffer.wait_ready()
        elif self.ranks.local_rank == 0:
            self.metrics.serve(empty=True)  # other pods: the metrics port answers, no series
        r = self.ranks
        log.info(
            "trainer rank started",
            extra={"rank": r.rank, "world_size": r.world_size, "local_rank": r.local_rank},
        )
        start = self.resume_step()
        if start > 0:
            self.restore(start)
        interval = self.spec.checkpoint.interval_steps
        last_ckpt = start if start > 0 else None
        started = time.time()
        for step in range(start, self.spec.steps):
            record = self.train_one(step)
            if self.ranks.is_main:
                record.update(self.evaluate(step))
            record["elapsed_s"] = time.time() - started
            nxt = step + 1
            if nxt % interval == 0 or nxt == self.spec.steps:
                self.save_checkpoint(nxt)
                last_ckpt = nxt
                record["checkpoint"] = nxt
            hf_every = self.spec.checkpoint.hf_interval_steps
            if nxt == self.spec.steps or (hf_every and nxt % hf_every == 0):
                record["hf_export"] = self.export_hf(nxt)
            self.progress.update(record, step=nxt, weightVersion=nxt, lastCheckpointStep=last_ckpt)
            if self.ranks.is_main:
                log.info("step", extra=record)
        self.progress.update(done=True)
        log.info("training finished", extra={"steps": self.spec.steps})

    def close(self) -> None:
        if self.engines is not None:
            self.engines.close()
        self.buffer.close()
        if self.ctrl is not None and dist.is_initialized():
            dist.destroy_process_group()
