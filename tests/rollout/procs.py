"""Real processes on loopback for the rollout tests: engines, the sglang-router, the buffer.

Every process is started with its own log file and killed (by its pid) in teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from rlpost.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
ALPHABET = "abcdefghij0123456789 =+"
TOKEN = "test-token-123"


def write_job(directory: Path, prompts: Path, **spec_overrides: Any) -> Path:
    spec: dict[str, Any] = {
        "model": {"config": {}, "tokenizer": f"char:{ALPHABET}", "dtype": "float32"},
        "data": {"prompts": str(prompts)},
        "algorithm": {"groupSize": 4, "rolloutBatchSize": 2, "dynamicSampling": False},
        "rollout": {"maxNewTokens": 6, "maxStaleness": 0},
        "reward": {"type": "exact_match"},
    }
    for key, value in spec_overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    job = {
        "apiVersion": "rlpost.dev/v1alpha1",
        "kind": "RLPostTrainJob",
        "metadata": {"name": "rtest"},
        "spec": spec,
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def write_prompts(path: Path, n: int = 20) -> Path:
    import json

    path.write_text(
        "".join(json.dumps({"prompt": f"{i}+{i}=", "label": str(2 * i)}) + "\n" for i in range(n))
    )
    return path


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path):
        self.name, self.argv, self.log = name, argv, log
        self._logf = log.open("ab")
        self.p = subprocess.Popen(
            argv, env=env, stdout=self._logf, stderr=subprocess.STDOUT, cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, sig)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait(timeout=10)
        self._logf.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def env_for(config: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLPOST_")}
    env.update(
        RLPOST_CONFIG=str(config),
        RLPOST_TORCH_THREADS="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "rollout_image")]),
    )
    env.update(extra)
    return env


def wait_http(url: str, proc: Proc, timeout: float = 40.0, ok=(200,)) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(
                f"{proc.name} exited ({proc.p.returncode}):\n{proc.output()[-3000:]}"
            )
        try:
            if httpx.get(url, timeout=2).status_code in ok:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{proc.name} not up at {url} after {timeout}s:\n{proc.output()[-3000:]}")


class Procs:
    """Starts processes for one test; `close()` kills every one of them."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.all: list[Proc] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, argv, env, self.tmp / f"{name}.log")
        self.all.append(proc)
        return proc

    def engine(self, config: Path, token: str | None = TOKEN, **env: str) -> tuple[Proc, str]:
        port = free_port()
        extra = {"RLPOST_TOKEN": token} if token else {}
        proc = self.start(
            f"engine-{port}",
            [sys.executable, "-m", "rlpost_rollout.engine", "--host", "127.0.0.1",
             "--port", str(port), "--max-batch", "16"],
            env_for(config, **extra, **env),
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc)
        return proc, url

    def router(self, config: Path, engine_urls: list[str]) -> tuple[Proc, str]:
        port = free_port()
        proc = self.start(
            f"router-{port}",
            [sys.executable, "-m", "rlpost_rollout.router", "--host", "127.0.0.1",
             "--port", str(port)],
            env_for(config, RLPOST_ENGINE_URLS=",".join(engine_urls)),
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc, timeout=40)
        return proc, url

    def buffer(
        self, config: Path, router_url: str, state: Path, wait: bool = True, **env: str
    ) -> tuple[Proc, str]:
        port = free_port()
        proc = self.start(
            f"buffer-{port}",
            [sys.executable, "-m", "rlpost_rollout.buffer", "--host", "127.0.0.1",
             "--port", str(port)],
            env_for(config, RLPOST_TOKEN=TOKEN, RLPOST_ROUTER_URL=router_url,
                    RLPOST_STATE_DIR=str(state), **env),
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        if wait:
            wait_http(f"{url}/health", proc)
        return proc, url

    def close(self) -> None:
        for proc in self.all:
            proc.kill()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}
