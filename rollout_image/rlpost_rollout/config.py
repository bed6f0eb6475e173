"""What every rollout process reads at start: the job spec (RLPOST_CONFIG) and the token."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from rlpost.api import RLPostTrainJob
from rlpost.storage import resolve_job_paths

DEFAULT_CONFIG = "/etc/rlpost/job.yaml"


def load_job(path: str | None = None) -> RLPostTrainJob:
    """The job spec every role shares; a missing or invalid file is a clear error at start."""
    path = path or os.environ.get("RLPOST_CONFIG", DEFAULT_CONFIG)
    file = Path(path)
    if not file.exists():
        raise SystemExit(f"job config {path!r} not found (set RLPOST_CONFIG)")
    # Model and data paths point into their PVC mounts in a cluster (rlpost.storage: the
    # same rule as the trainer's).
    return resolve_job_paths(RLPostTrainJob.model_validate(yaml.safe_load(file.read_text())))


def token() -> str | None:
    """The per-job bearer token; None (auth off) when RLPOST_TOKEN is unset or empty."""
    return os.environ.get("RLPOST_TOKEN") or None


def job_name(job: RLPostTrainJob) -> str:
    return os.environ.get("RLPOST_JOB_NAME") or job.metadata.name
