"""Which GPUs each role of `rlpost run` sees (its CUDA_VISIBLE_DEVICES).

With enough GPUs every role gets its own, as separate pods would on a cluster: the trainer
the first `trainer.gpusPerPod`, each engine the next `rollout.gpusPerEngine`; weight sync
can then use NCCL between them. With fewer, every role sees all of them (shared), and NCCL
cannot put two ranks on one GPU: an `auto` transport becomes gloo, an explicit `nccl` is
refused before anything starts. On a machine without GPUs nothing changes (gloo).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rlpost.api import RLPostTrainJobSpec, Transport


@dataclass
class GpuPlan:
    gpus: list[str]  # what this machine shows us
    trainer: str | None  # CUDA_VISIBLE_DEVICES for the role; None: inherit ours
    engines: list[str | None]

    @property
    def shared(self) -> bool:
        """GPU roles see the same GPUs (there were too few to give each its own)."""
        return bool(self.gpus) and self.trainer is None

    def describe(self, colocated: bool = False) -> str:
        if colocated:
            where = f"GPUs {','.join(self.gpus)}" if self.gpus else "the CPU"
            return f"colocated: the trainer and the engines share {where}"
        if not self.gpus:
            return "no GPUs on this machine: every role on the CPU"
        if self.shared:
            return f"GPUs {','.join(self.gpus)} shared by the trainer and the engines"
        engines = ", ".join(f"engine-{i} [{g or 'cpu'}]" for i, g in enumerate(self.engines))
        return f"trainer [{self.trainer or 'cpu'}], {engines}"


def visible_gpus() -> list[str]:
    """GPU ids this process may hand out: CUDA_VISIBLE_DEVICES if set, else nvidia-smi's."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.split() if out.returncode == 0 else []


def plan_gpus(spec: RLPostTrainJobSpec, gpus: list[str]) -> GpuPlan:
    want_trainer = spec.trainer.gpus_per_pod
    want_engine = spec.rollout.gpus_per_engine
    if not gpus:
        return GpuPlan([], None, [None] * spec.rollout.engines)
    if str(spec.mode) == "colocated":  # trainer and engines share the GPUs, as in a worker pod
        return GpuPlan(gpus, None, [None] * spec.rollout.engines)
    if want_trainer + want_engine * spec.rollout.engines > len(gpus):
        return GpuPlan(gpus, None, [None] * spec.rollout.engines)
    free = iter(gpus)

    def take(n: int) -> str:
        return ",".join(next(free) for _ in range(n))  # "": this role runs on the CPU

    return GpuPlan(
        gpus, take(want_trainer), [take(want_engine) for _ in range(spec.rollout.engines)]
    )


def transport_problem(spec: RLPostTrainJobSpec, plan: GpuPlan) -> str | None:
    if str(spec.mode) == "colocated" and spec.weight_sync.transport not in (
        Transport.AUTO,
        Transport.IPC,
    ):
        return (
            f"spec.weightSync.transport: {spec.weight_sync.transport} with mode: colocated; "
            "`rlpost run` syncs colocated engines by IPC: use auto or ipc"
        )
    if spec.weight_sync.transport != Transport.NCCL:
        return None
    if not plan.gpus:
        return "spec.weightSync.transport: nccl needs GPUs; use auto or gloo on this machine"
    if plan.shared:
        need = spec.trainer.gpus_per_pod + spec.rollout.gpus_per_engine * spec.rollout.engines
        return (
            f"spec.weightSync.transport: nccl needs the trainer and each engine on GPUs of "
            f"their own ({need} GPUs; this machine shows {len(plan.gpus)}): use auto or gloo"
        )
    return None


def local_transport(spec: RLPostTrainJobSpec, plan: GpuPlan) -> Transport:
    """What `auto` means here: NCCL when the trainer and every engine have GPUs of their
    own, else gloo (CPU roles, or GPUs shared: NCCL cannot hold two ranks on one GPU).
    Colocated mode: IPC (rlpost.weightsync.colocated), the only transport it runs with."""
    if str(spec.mode) == "colocated":
        return Transport.IPC  # CUDA IPC on GPUs, shared memory on CPU
    if spec.weight_sync.transport != Transport.AUTO:
        return spec.weight_sync.transport
    own = not plan.shared and bool(plan.trainer) and all(plan.engines)
    return Transport.NCCL if own else Transport.GLOO


def source_tree_env(gpus: str, **extra: str) -> dict[str, str]:
    """This process's environment for a role started from this source tree (GPU tests and
    benchmarks): the role folders on PYTHONPATH, no inherited RLPOST_* settings, these GPUs,
    and NVLink multicast (NVLS) off, which the lent GPU machines do not support."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLPOST_")}
    path = [str(root), str(root / "rollout_image"), str(root / "trainer_image")]
    env.update(
        CUDA_VISIBLE_DEVICES=gpus,
        PYTHONPATH=os.pathsep.join(path + [env.get("PYTHONPATH", "")]),
        PYTHONUNBUFFERED="1",
        NCCL_NVLS_ENABLE="0",
        TORCH_SYMM_MEM_DISABLE_MULTICAST="1",
        NVSHMEM_DISABLE_NVLS="1",
    )
    env.update(extra)
    return env
