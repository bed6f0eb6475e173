"""Real reference engines (python -m rlpost_rollout.engine) as subprocesses for these tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from rlpost.local.procs import Processes, Role
from rlpost.local.runner import free_port

TOKEN = "trainer-test-token"
ALPHABET = "abcdefgh="


def job_dict(prompts: str = "unused.jsonl", **spec) -> dict:
    base = {
        "model": {
            "config": {"max_position_embeddings": 32},
            "tokenizer": f"char:{ALPHABET}",
            "dtype": "float32",
        },
        "data": {"prompts": prompts},
        "rollout": {"engine": "reference", "maxNewTokens": 1},
        "seed": 0,
    }
    base.update(spec)
    return {"apiVersion": "rlpost.dev/v1alpha1", "kind": "RLPostTrainJob",
            "metadata": {"name": "wtest"}, "spec": base}  # fmt: skip


@pytest.fixture
def engines(tmp_path):
    """start(n) -> list of engine base URLs; every process is stopped at teardown."""
    procs = Processes()
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_dict()))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RLPOST_")},
        "RLPOST_CONFIG": str(job),
        "RLPOST_TOKEN": TOKEN,
        "RLPOST_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }

    def start(n: int = 1) -> list[str]:
        roles = []
        for i in range(n):
            port = free_port()
            argv = [sys.executable, "-m", "rlpost_rollout.engine", "--host", "127.0.0.1",
                    "--port", str(port)]  # fmt: skip
            roles.append(
                procs.start(
                    Role(
                        f"engine-{i}",
                        argv,
                        env,
                        Path(tmp_path, f"engine-{i}.log"),
                        f"http://127.0.0.1:{port}/health",
                    )  # fmt: skip
                )
            )
        procs.wait_healthy(roles, timeout_s=120)
        return [r.health_url.removesuffix("/health") for r in roles]

    yield start
    procs.stop_all(grace_s=5)
