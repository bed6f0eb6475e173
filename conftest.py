"""Fixtures shared by tests/ and e2e/: the real local control plane.

`cluster` starts etcd, kube-apiserver, controller-manager, scheduler, Kueue (with its
webhooks) and kwok once per test session, on free loopback ports, and stops exactly those
processes at the end. Set RLPOST_CLUSTER_STATE to the state directory of a cluster started
with `make cluster` to reuse it instead (faster while developing).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

from e2e.cluster import LocalCluster
from e2e.cluster.paths import missing_binaries


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
    c = LocalCluster(state=state)
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
