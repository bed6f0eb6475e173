"""Where a job's files are, in a cluster and in `rlpost run`: one rule for every role.

In a cluster the operator mounts `model.pvc` read-only at /models, `data.pvc` read-only at
/data, and the durable state volume (`checkpoint.pvc` at /checkpoints, else the per-job PVC
`<job>-state` at /state). A relative `model.path`, `model.tokenizer`, `data.prompts` or
`eval.prompts` (in data.pvc) whose PVC is set names a file inside that mount; an absolute
path is used as given.
`rlpost run` makes relative paths absolute (relative to the job file) before any role
starts, so roles see absolute paths there and this rule leaves them alone.

The trainer's checkpoint directory: `RLPOST_CHECKPOINT_DIR` (always set by the operator,
inside the state volume), else `checkpoint.path` (`rlpost run`: a local directory), else
`$RLPOST_STATE_DIR/checkpoints`.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from pathlib import Path

from rlpost.api import RLPostTrainJob, RLPostTrainJobSpec

MODEL_MOUNT = "/models"
DATA_MOUNT = "/data"
CHECKPOINT_MOUNT = "/checkpoints"  # spec.checkpoint.pvc
STATE_MOUNT = "/state"  # the per-job PVC <job>-state (default)


def under_mount(path: str, mount: str) -> str:
    """A relative path is inside `mount`; an absolute one is used as given."""
    if posixpath.isabs(path):
        return path
    return posixpath.normpath(posixpath.join(mount, path))


def resolve_spec_paths(spec: RLPostTrainJobSpec) -> RLPostTrainJobSpec:
    """A copy of `spec` whose model/tokenizer/data paths point into their PVC mounts."""
    spec = spec.model_copy(deep=True)
    if spec.model.pvc:
        if spec.model.path:
            spec.model.path = under_mount(spec.model.path, MODEL_MOUNT)
        tok = spec.model.tokenizer
        if tok and not tok.startswith("char:"):
            spec.model.tokenizer = under_mount(tok, MODEL_MOUNT)
    if spec.data.pvc and spec.data.prompts:
        spec.data.prompts = under_mount(spec.data.prompts, DATA_MOUNT)
    if spec.data.pvc and spec.eval is not None:  # held-out prompts: the same data volume
        spec.eval.prompts = under_mount(spec.eval.prompts, DATA_MOUNT)
    return spec


def resolve_job_paths(job: RLPostTrainJob) -> RLPostTrainJob:
    return job.model_copy(update={"spec": resolve_spec_paths(job.spec)})


def cluster_state_dir(job_name: str, spec: RLPostTrainJobSpec) -> str:
    """The job's durable directory inside its state volume (roles use `<this>/<role>`).

    `checkpoint.pvc` may be shared by jobs: the job's name separates them there
    (`/checkpoints/<checkpoint.path>/<job>`). The per-job PVC holds one job
    (`/state/<checkpoint.path>`). `checkpoint.path` is always inside the volume (a leading
    '/' is ignored): state outside it would not survive the pod."""
    sub = (spec.checkpoint.path or "").strip("/")
    if spec.checkpoint.pvc:
        return (
            posixpath.join(CHECKPOINT_MOUNT, sub, job_name)
            if sub
            else (posixpath.join(CHECKPOINT_MOUNT, job_name))
        )
    return posixpath.join(STATE_MOUNT, sub) if sub else STATE_MOUNT


def checkpoint_dir(spec: RLPostTrainJobSpec, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("RLPOST_CHECKPOINT_DIR"):
        return Path(env["RLPOST_CHECKPOINT_DIR"])
    if spec.checkpoint.path:  # outside a cluster: a local directory
        return Path(spec.checkpoint.path)
    return Path(env.get("RLPOST_STATE_DIR") or ".") / "checkpoints"
