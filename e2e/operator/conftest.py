"""Fixtures of the operator suite: the CRD, ResourceFlavors and priority classes of this
suite (names suffixed), a ClusterQueue + LocalQueue per test namespace, and the operator
run as a real process (`python -m rlpost_operator`) against the local control plane.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from e2e.cluster.localcluster import free_port
from e2e.state_pvs import StaticPVBinder

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "rlposttrainjobs.rlpost.dev.yaml"
GPU = "nvidia.com/gpu"


@dataclass
class Suite:
    suffix: str
    flavor_a: str
    flavor_b: str
    flavor_cpu: str
    high: str
    low: str


@pytest.fixture(scope="session")
def op_suite(cluster):
    sfx = uuid.uuid4().hex[:5]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.wait_for(
        "RLPostTrainJob CRD established",
        lambda: (
            "Established"
            in cluster.kubectl(
                "get", "crd", "rlposttrainjobs.rlpost.dev", "-o", "jsonpath={.status.conditions}"
            ).stdout
        ),
        timeout=30,
    )
    s = Suite(
        sfx,
        f"op-gpu-a-{sfx}",
        f"op-gpu-b-{sfx}",
        f"op-cpu-{sfx}",
        f"op-high-{sfx}",
        f"op-low-{sfx}",
    )
    tol = {"key": "rlpost.dev/gpu-kind", "operator": "Equal", "value": "b", "effect": "NoSchedule"}
    docs = [
        flavor(s.flavor_a, {"nodeLabels": {"rlpost.dev/gpu-kind": "a"}}),
        flavor(s.flavor_b, {"nodeLabels": {"rlpost.dev/gpu-kind": "b"}, "tolerations": [tol]}),
        flavor(s.flavor_cpu, {}),
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": s.high},
            "value": 1000,
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": s.low},
            "value": 10,
        },
    ]
    cluster.apply(docs)
    yield s
    for d in docs:
        cluster.kubectl(
            "delete", d["kind"].lower(), d["metadata"]["name"], "--wait=false", check=False
        )


def flavor(name: str, spec: dict) -> dict:
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ResourceFlavor",
        "metadata": {"name": name},
        "spec": spec,
    }


def queue_docs(suite: Suite, ns: str, gpus: int, gpu_flavor: str, cpus: int = 64) -> list[dict]:
    return [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": ns},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory"],
                        "flavors": [
                            {
                                "name": suite.flavor_cpu,
                                "resources": [
                                    {"name": "cpu", "nominalQuota": cpus},
                                    {"name": "memory", "nominalQuota": "256Gi"},
                                ],
                            }
                        ],
                    },
                    {
                        "coveredResources": [GPU],
                        "flavors": [
                            {"name": gpu_flavor, "resources": [{"name": GPU, "nominalQuota": gpus}]}
                        ],
                    },
                ],
            },
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": "q", "namespace": ns},
            "spec": {"clusterQueue": ns},
        },
    ]


@dataclass
class Operator:
    """`python -m rlpost_operator` as a process, killable with SIGKILL and restartable."""

    cluster: object
    namespace: str
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def start(self) -> Operator:
        out = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rlpost_operator",
                "--namespace",
                self.namespace,
                "--metrics-port",
                str(self.port),
                "--kubeconfig",
                str(self.cluster.kubeconfig),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "RLPOST_LOG_LEVEL": "INFO"},
        )
        self.cluster.wait_for("operator /metrics", self.metrics_text, timeout=30)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def metrics_text(self) -> str:
        if self.proc and self.proc.poll() is not None:
            raise RuntimeError(f"operator exited {self.proc.returncode}: {self.log_tail()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return r.read().decode()

    def writes(self) -> float:
        """Sum of rlpost_api_requests_total over the write verbs."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if line.startswith("rlpost_api_requests_total{") and any(
                f'verb="{v}"' in line for v in ("create", "apply", "patch", "delete")
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text()[-n:] if self.log.exists() else ""


@pytest.fixture(scope="session")
def state_pvs(cluster):
    """Static PVs for the jobs' `<job>-state` PVCs (e2e/state_pvs.py: no provisioner here)."""
    binder = StaticPVBinder(cluster).start()
    yield binder
    binder.stop()


@pytest.fixture
def op(cluster, op_suite, namespace, tmp_path, request, state_pvs):
    """A test namespace with its ClusterQueue (8 GPUs of flavor a, unless the test is
    marked `gpus(n, "b")`; 64 CPUs unless marked `cpus(n)`) and a running operator
    watching it."""
    marker = request.node.get_closest_marker("gpus")
    gpus, kind = marker.args if marker else (8, "a")
    gpu_flavor = op_suite.flavor_a if kind == "a" else op_suite.flavor_b
    cpu_marker = request.node.get_closest_marker("cpus")
    cpus = cpu_marker.args[0] if cpu_marker else 64
    docs = queue_docs(op_suite, namespace, gpus, gpu_flavor, cpus)
    cluster.apply(docs)
    o = Operator(cluster, namespace, tmp_path / "operator.log").start()
    yield o
    o.stop()
    if request.node.rep_call_failed if hasattr(request.node, "rep_call_failed") else False:
        print(o.log_tail(), file=sys.stderr)
    cluster.kubectl("delete", "rljob", "--all", "-n", namespace, "--wait=false", check=False)
    cluster.kubectl("delete", "clusterqueue", namespace, "--wait=false", check=False)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpus(n, kind): GPU quota of the test's ClusterQueue")
    config.addinivalue_line("markers", "cpus(n): CPU quota of the test's ClusterQueue (64)")


def job_doc(name: str, ns: str, **spec) -> dict:
    base = {
        "queueName": "q",
        "model": {"config": {"hidden_size": 8}},
        "data": {"prompts": "prompts.jsonl"},
        "trainer": {"replicas": 2, "gpusPerPod": 2, "resources": {"cpu": "1", "memory": "1Gi"}},
        "rollout": {
            "engines": 2,
            "gpusPerEngine": 1,
            "engine": "reference",
            "resources": {"cpu": "1", "memory": "1Gi"},
        },
        "checkpoint": {"intervalSteps": 10},
    }
    for k, v in spec.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return {
        "apiVersion": "rlpost.dev/v1alpha1",
        "kind": "RLPostTrainJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": base,
    }


def dump(doc) -> str:
    return yaml.safe_dump(doc)


def wait(cluster, what, fn, timeout=60):
    return cluster.wait_for(what, fn, timeout=timeout, interval=0.5)


def now() -> float:
    return time.monotonic()
