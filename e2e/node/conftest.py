"""Fixtures for the real node (e2e/cluster/node.py): the session cluster's node and a
busybox image imported into its containerd."""

from __future__ import annotations

import pytest

from e2e.cluster import node as real_node
from e2e.cluster.oci import BUSYBOX_IMAGE, busybox_archive


@pytest.fixture(scope="session")
def node_cluster(cluster):
    if not cluster.real_node:
        pytest.skip("the session cluster has no real node (RLPOST_REAL_NODE=0?)")
    return cluster


@pytest.fixture(scope="session")
def busybox(node_cluster, tmp_path_factory) -> str:
    archive = busybox_archive(tmp_path_factory.mktemp("images") / "busybox.oci.tar")
    real_node.import_image(archive, state=node_cluster.state)
    return BUSYBOX_IMAGE
