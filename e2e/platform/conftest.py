"""Fixtures of the platform suite: the kueue/ tenant setup and the chart, applied for real.

`tenants` (per module) applies kueue/ with every name suffixed, so a module's quota
arithmetic never sees another module's workloads. `platform` (per session) is one such
tenant setup with the chart installed once per tenant namespace, as a platform team does.
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

from e2e.platform.chart import CHART, REPO, kueue_docs

RELEASE = "rlpost"


@dataclass
class Tenants:
    """kueue/ applied with every name suffixed: `team-a` is `team-a-<suffix>`, etc."""

    suffix: str
    docs: list[dict] = field(default_factory=list)
    kubeconfigs: dict[str, Path] = field(default_factory=dict)

    def name(self, base: str) -> str:
        return f"{base}-{self.suffix}"

    @property
    def a(self) -> str:  # namespace, ClusterQueue and LocalQueue of team-a
        return self.name("team-a")

    @property
    def b(self) -> str:
        return self.name("team-b")


def apply_tenants(cluster) -> Tenants:
    t = Tenants(suffix=uuid.uuid4().hex[:5])
    t.docs = kueue_docs(t.suffix)
    order = {"Namespace": 0, "ResourceFlavor": 1, "Cohort": 1, "WorkloadPriorityClass": 1}
    cluster.apply(sorted(t.docs, key=lambda d: order.get(d["kind"], 2)))
    for ns in (t.a, t.b):
        cluster.wait_for(
            f"default ServiceAccount in {ns}",
            lambda ns=ns: (
                cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0
            ),
            timeout=30,
        )
    return t


def delete_tenants(cluster, t: Tenants) -> None:
    for kind in ("Namespace", "ClusterQueue", "ResourceFlavor", "Cohort", "WorkloadPriorityClass"):
        names = [d["metadata"]["name"] for d in t.docs if d["kind"] == kind]
        if names:
            cluster.kubectl("delete", kind.lower(), *names, "--wait=false", check=False)


@pytest.fixture(scope="module")
def tenants(cluster):
    t = apply_tenants(cluster)
    yield t
    delete_tenants(cluster, t)


def helm_install(cluster, namespace: str, *extra: str):
    return cluster.helm(
        "install", RELEASE, str(CHART), "--namespace", namespace, "--wait", "--timeout", "120s",
        *extra, timeout=180,
    )  # fmt: skip


@pytest.fixture(scope="session")
def platform_state_pvs(cluster):
    """Static PVs for the jobs' `<job>-state` PVCs (e2e/state_pvs.py: no provisioner here)."""
    from e2e.state_pvs import StaticPVBinder

    binder = StaticPVBinder(cluster).start()
    yield binder
    binder.stop()


@pytest.fixture(scope="session")
def platform(cluster, tmp_path_factory, platform_state_pvs):
    """Two tenants from kueue/, the chart installed in each tenant's namespace, and a
    kubeconfig per tenant that authenticates with the chart's ServiceAccount token."""
    t = apply_tenants(cluster)
    installed = []
    try:
        for ns in (t.a, t.b):
            helm_install(cluster, ns)
            installed.append(ns)
            token = cluster.create_token(RELEASE, ns)
            t.kubeconfigs[ns] = cluster.kubeconfig_for_token(
                token, tmp_path_factory.mktemp("sa") / f"{ns}.kubeconfig"
            )
        yield t
    finally:
        for ns in installed:
            cluster.helm("uninstall", RELEASE, "--namespace", ns, "--wait", check=False)
        delete_tenants(cluster, t)


@dataclass
class OperatorProcess:
    proc: subprocess.Popen
    namespace: str
    metrics_port: int
    log: Path

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def operator_a(platform, tmp_path_factory):
    """`python -m rlpost_operator` for tenant a, authenticated ONLY by the chart
    ServiceAccount's token (TokenRequest): whatever it manages to do, the chart's RBAC
    allowed. It runs as a local process (kwok pods run no containers)."""
    from e2e.platform.prometheus import free_port

    ns = platform.a
    port = free_port()
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env.update(KUBECONFIG=str(platform.kubeconfigs[ns]), PYTHONUNBUFFERED="1")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlpost_operator", "--namespace", ns,
             "--metrics-port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=REPO,
        )  # fmt: skip
    op = OperatorProcess(proc, ns, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"operator exited ({proc.returncode}):\n{op.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(op.metrics_url, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"operator metrics not up in 60s:\n{op.log_text()[-3000:]}")
            time.sleep(0.5)
        yield op
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
