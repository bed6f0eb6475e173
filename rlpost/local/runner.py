"""Runs a job's roles as local processes with the images' entrypoints and env."""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from rlpost.api import RLPostTrainJob
from rlpost.local.gpus import local_transport, plan_gpus, visible_gpus
from rlpost.local.plot import read_steps, reward_curve
from rlpost.local.procs import Processes, Role, RoleFailed
from rlpost.ports import free_port

log = logging.getLogger("rlpost.local")


def latest_checkpoint(root: Path) -> int | None:
    steps = [
        int(p.name.removeprefix("step-"))
        for p in root.glob("step-*")
        if (p / "state.pt").exists() and p.name.removeprefix("step-").isdigit()
    ]
    return max(steps) if steps else None


def with_gpus(env: dict[str, str], gpus: str | None) -> dict[str, str]:
    """`env` with this role's CUDA_VISIBLE_DEVICES (None: as given)."""
    return env if gpus is None else {**env, "CUDA_VISIBLE_DEVICES": gpus}


@dataclass
class RunResult:
    run_dir: Path
    steps: list[dict]
    wall_s: float


def step_line(r: dict, total: int) -> str:
    if r.get("kl") is not None:
        kl = f"kl {r['kl']:.4f}"
    else:
        kl = f"kl(rollout) {r.get('kl_rollout') or 0.0:.4f}"
    return (
        f"step {r['step'] + 1:>4}/{total}  reward {r['reward_mean']:.3f}  {kl}  "
        f"tok/s {r['tokens_per_second']:7.1f}  sync {r['sync_ms']:6.1f} ms  "
        f"stale<={r['max_staleness']}"
    )


def eval_line(r: dict) -> str:
    """The eval results (spec.eval) of a step record that has them."""
    return (
        f"eval {r['step'] + 1:>4}: greedy {r['eval_greedy']:.3f}  "
        f"pass@{r['eval_k']} {r['eval_pass_at_k']:.3f}  mean@{r['eval_k']} "
        f"{r['eval_mean_at_k']:.3f}  ({r['eval_prompts']} prompts, {r['eval_s']:.1f}s)"
    )


class LocalRun:
    def __init__(
        self, job: RLPostTrainJob, run_dir: Path, quiet: bool = False, trainer_ranks: int = 1
    ):
        self.job = job
        self.spec = job.spec
        self.name = job.metadata.name
        self.run_dir = run_dir
        self.quiet = quiet
        # Data-parallel trainer ranks, as one trainer pod of that many GPUs (gloo on the CPU).
        self.trainer_ranks = trainer_ranks
        self.procs = Processes()
        self.token = secrets.token_hex(16)
        self.steps_file = run_dir / "steps.jsonl"
        self.gpus = plan_gpus(self.spec, visible_gpus())

    # ------------------------------------------------------------------ wiring

    def base_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("RLPOST_") and k != "KUBERNETES_SERVICE_HOST"
        }
        env.update(
            RLPOST_CONFIG=str(self.run_dir / "job.yaml"),
            RLPOST_TOKEN=self.token,
            RLPOST_JOB_NAME=self.name,
            RLPOST_MODE=str(self.spec.mode),  # colocated: engines free memory while it trains
            RLPOST_TORCH_THREADS="1",
            OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        return env

    def roles(self) -> list[list[Role]]:
        """Start order, in waves that are health-checked before the next starts."""
        py = sys.executable
        logs = self.run_dir / "logs"
        env = self.base_env()
        ckpt_root = (
            Path(self.spec.checkpoint.path)
            if self.spec.checkpoint.path
            else self.run_dir / "trainer-state" / "checkpoints"
        )
        resume = latest_checkpoint(ckpt_root) if ckpt_root.is_dir() else None
        if resume:
            env["RLPOST_RESUME_STEP"] = str(resume)
            self.resumed_from = resume
        else:
            self.resumed_from = None
        engines = []
        for i, gpus in enumerate(self.gpus.engines):
            port = free_port()
            engines.append(
                Role(
                    f"engine-{i}",
                    [py, "-m", "rlpost_rollout.engine", "--host", "127.0.0.1", "--port", str(port)],
                    with_gpus(env, gpus),
                    logs / f"engine-{i}.log",
                    f"http://127.0.0.1:{port}/health",
                )
            )
        engine_urls = ",".join(r.health_url.removesuffix("/health") for r in engines)
        router_port, buffer_port, metrics_port = free_port(), free_port(), free_port()
        router_metrics_port = free_port()  # sglang-router's default would clash across runs
        router_url = f"http://127.0.0.1:{router_port}"
        buffer_url = f"http://127.0.0.1:{buffer_port}"
        router = Role(
            "router",
            [
                py,
                "-m",
                "rlpost_rollout.router",
                "--host",
                "127.0.0.1",
                "--port",
                str(router_port),
                "--prometheus-port",
                str(router_metrics_port),
            ],  # fmt: skip
            {**env, "RLPOST_ENGINE_URLS": engine_urls},
            logs / "router.log",
            f"{router_url}/health",
        )
        pool = self.reward_pool(env, logs)
        buffer = Role(
            "buffer",
            [py, "-m", "rlpost_rollout.buffer", "--host", "127.0.0.1", "--port", str(buffer_port)],
            {
                **env,
                "RLPOST_ROUTER_URL": router_url,
                "RLPOST_STATE_DIR": str(self.run_dir / "buffer-state"),
                **({"RLPOST_RAY_ADDRESS": self.urls_ray} if pool else {}),
            },
            logs / "buffer.log",
            f"{buffer_url}/health",
        )
        trainer = Role(
            "trainer",
            [py, "-m", "rlpost_trainer"],
            {
                **with_gpus(env, self.gpus.trainer),
                "RLPOST_BUFFER_URL": buffer_url,
                "RLPOST_ENGINE_URLS": engine_urls,
                "RLPOST_STATE_DIR": str(self.run_dir / "trainer-state"),
                "RLPOST_METRICS_PORT": str(metrics_port),
                "RLPOST_PROGRESS_DIR": str(self.run_dir),
                **self.gang_env(),
            },
            logs / "trainer.log",
        )
        self.urls = {
            "engines": engine_urls.split(","),
            "router": router_url,
            "buffer": buffer_url,
            "trainer_metrics": f"http://127.0.0.1:{metrics_port}/metrics",
        }
        if pool:
            self.urls["ray"] = self.urls_ray
        return [engines, [router, *pool], [buffer], [trainer]]

    def reward_pool(self, env: dict[str, str], logs: Path) -> list[Role]:
        """The Ray head of rewards.pool (`--reward-workers N`), or nothing (workers 0)."""
        workers = self.spec.reward.pool.workers
        if workers == 0:
            return []
        from rlpost.local import raypool

        port = free_port()
        self.urls_ray = f"127.0.0.1:{port}"
        argv = raypool.head_argv(port, workers)
        return [Role("reward-pool", argv, raypool.head_env(env), logs / "reward-pool.log")]

    def gang_env(self) -> dict[str, str]:
        """One trainer "pod" of `trainer_ranks` ranks: its launcher (rlpost_trainer.launch)
        starts them and finds a free rendezvous port on 127.0.0.1."""
        if self.trainer_ranks <= 1:
            return {}
        return {"NNODES": "1", "NPROC_PER_NODE": str(self.trainer_ranks),
                "RLPOST_POD_INDEX": "0", "MASTER_ADDR": "127.0.0.1"}  # fmt: skip

    # ------------------------------------------------------------------ running

    def start(self, health_timeout_s: float = 180.0) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        job = self.job.model_copy(deep=True)
        job.spec.weight_sync.transport = local_transport(self.spec, self.gpus)
        (self.run_dir / "job.yaml").write_text(yaml.safe_dump(job.wire(), sort_keys=False))
        for wave in self.roles():
            for role in wave:
                self.procs.start(role)
            self.procs.wait_healthy(wave, health_timeout_s)
        (self.run_dir / "run.json").write_text(
            json.dumps({"urls": self.urls, "resumed_from": self.resumed_from}, indent=2)
        )

    def trainer(self) -> Role:
        return next(r for r in self.procs.roles if r.name == "trainer")

    def follow(self, timeout_s: float | None = None) -> RunResult:
        """Print one line per step until the trainer finishes; raise if any role dies."""
        from tqdm import tqdm

        started = time.monotonic()
        total = self.spec.steps
        first = self.resumed_from or 0
        bar = tqdm(
            total=total,
            initial=first,
            unit="step",
            disable=self.quiet or None,  # None: only on a terminal
            dynamic_ncols=True,
        )
        seen = len(read_steps(self.steps_file))
        try:
            while True:
                steps = read_steps(self.steps_file)
                for r in steps[seen:]:
                    if not self.quiet:
                        tqdm.write(step_line(r, total))
                        if "eval_greedy" in r:
                            tqdm.write(eval_line(r))
                    bar.update(1)
                seen = len(steps)
                code = self.trainer().proc.poll()
                if code is not None:
                    if code != 0:
                        raise self.trainer().failure("failed")
                    break
                self.procs.check_alive()
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    raise RoleFailed(f"run did not finish within {timeout_s:.0f}s")
                time.sleep(0.3)
        finally:
            bar.close()
            self.write_curve()
        return RunResult(self.run_dir, read_steps(self.steps_file), time.monotonic() - started)

    def write_curve(self) -> None:
        steps = read_steps(self.steps_file)
        if steps:
            chance = self.job.metadata.annotations.get("rlpost.dev/chance-level")
            reward_curve(
                steps,
                self.run_dir / "reward_curve.png",
                self.name,
                float(chance) if chance else None,
            )

    def stop(self) -> None:
        self.procs.stop_all()
