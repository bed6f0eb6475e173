"""Fixtures shared by tests/ and e2e/: the real local control plane.

`cluster` starts etcd, kube-apiserver, controller-manager, scheduler, Kueue (with its
webhooks) and kwok once per test session, on free loopback ports, plus a real node
(containerd, kubelet, kube-proxy, CoreDNS: e2e/cluster/node.py; RLPOST_REAL_NODE=0 leaves
it out; unset, it is left out only while another session on this machine runs the one
real node), and stops exactly those processes at the end. Set RLPOST_CLUSTER_STATE to the
state directory of a cluster started with `make cluster` to reuse it instead (faster while
developing). Tests marked `cluster_down` take the session's cluster down: they run last.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from pathlib import Path

import pytest

from e2e.cluster import LocalCluster
from e2e.cluster.node import other_real_node
from e2e.cluster.paths import missing_binaries


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cluster_down: takes the session's cluster down (runs after every other test)"
    )


def pytest_collection_modifyitems(items):
    """e2e/incluster runs after the kwok suites (it adds the real node's default
    StorageClass and local PVs), and the cluster_down tests after everything."""

    def rank(item) -> int:
        if item.get_closest_marker("cluster_down"):
            return 2
        return 1 if "e2e/incluster/" in item.nodeid else 0

    items.sort(key=rank)  # stable: the order within each group is kept


def _want_real_node() -> bool:
    """RLPOST_REAL_NODE=0: kwok only; =1: a real node or fail; unset: a real node unless
    another session on this machine already runs the one real node (then kwok only)."""
    want = os.environ.get("RLPOST_REAL_NODE", "")
    if want in ("0", "1"):
        return want == "1"
    other = other_real_node()
    if other:
        warnings.warn(
            f"a real node already runs on this machine (cluster {other}): this session's "
            "cluster is kwok-only and e2e/node is skipped",
            stacklevel=1,
        )
    return other is None


@pytest.fixture(scope="session")
def cluster():
    reuse = os.environ.get("RLPOST_CLUSTER_STATE")
    if reuse:
        yield LocalCluster.load(Path(reuse))
        return
    missing = missing_binaries()
    if missing:
        pytest.fail(
            f"control-plane binaries missing: {missing}; run `make cluster-bins` "
            "(bash e2e/cluster/build.sh) — `make test` does this for you"
        )
    state = Path(tempfile.mkdtemp(prefix="rlpost-cluster-"))
    c = LocalCluster(state=state, real_node=_want_real_node())
    c.up()
    try:
        yield c
    finally:
        c.down()


@pytest.fixture
def namespace(cluster):
    """A fresh namespace (with its default ServiceAccount), deleted after the test."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.wait_for(
        "default ServiceAccount",
        lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        timeout=30,
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """`item.rep_call_failed`: fixtures that print diagnostics on failure read it. A test
    (or its fixture) that failed with the session's cluster up keeps the tails of the
    cluster's component logs (kubelet, containerd, API server, ...) in the run's tmp
    directory, which outlives the cluster: CI's post-mortem reads them there."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call_failed = rep.failed
    if rep.failed and "cluster" in getattr(item, "fixturenames", ()):
        kept = _keep_cluster_logs(item)
        if kept:
            rep.sections.append(("cluster logs", f"tails of the cluster's logs kept in {kept}"))


KEPT_LOG_BYTES = 2 << 20  # the last 2 MiB of each component's log
KEPT_LOG_FAILURES = 5  # the first failures only: later ones usually share a cause


def _keep_cluster_logs(item) -> Path | None:
    config = item.config
    n = getattr(config, "_rlpost_kept_logs", 0)
    cluster = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
    logs = getattr(cluster, "state", None)
    if n >= KEPT_LOG_FAILURES or logs is None or not (logs / "logs").is_dir():
        return None
    config._rlpost_kept_logs = n + 1
    out = config._tmp_path_factory.mktemp(f"cluster-logs-{item.name[:40]}")
    for f in sorted((logs / "logs").glob("*.log")):
        with open(f, "rb") as src:
            src.seek(max(0, f.stat().st_size - KEPT_LOG_BYTES))
            (out / f.name).write_bytes(src.read())
    return out
