"""A real Prometheus (Debian's /usr/bin/prometheus) for tests: a free loopback port, a
generated config, its own data directory, stopped (by pid) on `stop()`.

Targets come from file_sd files (`set_targets`), so targets that start after Prometheus
(the operator, the roles of a `rlpost run`) are picked up without a restart. Scrape
settings mirror the chart's ServiceMonitor/PodMonitor: honor_labels (the operator's
`namespace` and the roles' `job` label win), and a `role` label per role target, as the
PodMonitor relabels it from the pod label rlpost.dev/role.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from rlpost.ports import free_port

SCRAPE_INTERVAL = "1s"


class Prometheus:
    def __init__(self, workdir: Path, scrape_jobs: tuple[str, ...] = ("operator", "roles")):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.scrape_jobs = scrape_jobs
        self.proc: subprocess.Popen | None = None
        self.binary = shutil.which("prometheus") or "/usr/bin/prometheus"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Prometheus:
        if not Path(self.binary).is_file():
            raise RuntimeError("prometheus missing: `make system-deps` (Debian package)")
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": f"rlpost-{name}",
                    "honor_labels": True,
                    "scrape_timeout": "1s",
                    "metrics_path": "/metrics",
                    "file_sd_configs": [{"files": [str(self._sd(name))], "refresh_interval": "1s"}],
                }
                for name in self.scrape_jobs
            ],
        }
        for name in self.scrape_jobs:
            self.set_targets(name, [])
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = open(self.dir / "prometheus.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r,
            ):
                if r.status == 200:
                    return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"prometheus not ready in 60s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "prometheus.log").read_text(errors="replace")[-chars:]
        return ""

    # ------------------------------------------------------------------ targets
    def _sd(self, name: str) -> Path:
        return self.dir / f"targets-{name}.json"

    def set_targets(self, scrape_job: str, targets: list[tuple[str, dict[str, str]]]) -> None:
        """[(host:port, labels)]; written atomically (Prometheus watches the file)."""
        groups = [{"targets": [addr], "labels": labels} for addr, labels in targets]
        tmp = self._sd(scrape_job).with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self._sd(scrape_job))

    def active_targets(self) -> list[dict]:
        return self._get("/api/v1/targets")["activeTargets"]

    def wait_targets_up(self, addresses: set[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            up = {
                t["discoveredLabels"]["__address__"]
                for t in self.active_targets()
                if t["health"] == "up"
            }
            if addresses <= up:
                return
            time.sleep(0.5)
        raise TimeoutError(f"targets not up: {addresses - up}; {self.active_targets()}")

    # ------------------------------------------------------------------ queries
    def _get(self, path: str, **params) -> dict:
        q = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{q}", timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant query: the result vector ([] = no data)."""
        data = self._get("/api/v1/query", query=expr)
        if data["resultType"] != "vector":
            raise AssertionError(f"{expr}: {data['resultType']}, not a vector")
        return data["result"]

    def finite_values(self, expr: str) -> list[float]:
        out = []
        for s in self.query(expr):
            v = float(s["value"][1])
            if not math.isnan(v):
                out.append(v)
        return out

    def series(self, match: str) -> list[dict]:
        return self._get("/api/v1/series", **{"match[]": match})
