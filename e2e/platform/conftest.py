"""Fixtures of the platform suite: the kueue/ tenant setup applied for real."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from e2e.platform.chart import kueue_docs


@dataclass
class Tenants:
    """kueue/ applied with every name suffixed: `team-a` is `team-a-<suffix>`, etc."""

    suffix: str
    docs: list[dict]

    def name(self, base: str) -> str:
        return f"{base}-{self.suffix}"

    @property
    def a(self) -> str:  # namespace, ClusterQueue and LocalQueue of team-a
        return self.name("team-a")

    @property
    def b(self) -> str:
        return self.name("team-b")


@pytest.fixture(scope="module")
def tenants(cluster):
    t = Tenants(suffix=uuid.uuid4().hex[:5], docs=[])
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
    yield t
    for kind in ("ClusterQueue", "ResourceFlavor", "Cohort", "WorkloadPriorityClass", "Namespace"):
        for d in t.docs:
            if d["kind"] == kind:
                cluster.kubectl(
                    "delete", kind.lower(), d["metadata"]["name"], "--wait=false", check=False
                )
