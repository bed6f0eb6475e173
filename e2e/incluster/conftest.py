"""The product as a tenant runs it, on the real node: our images in containerd, the chart
installed by Helm for two tenants (the operator runs as a pod from its image), Kueue
queues whose flavor selects the real node, local PVs, and a real Prometheus.

Everything here runs containers for real: nothing is scheduled on kwok nodes. The node has
2 CPU cores, so a tenant's ClusterQueue holds one example job at a time.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field

import pytest

from e2e.cluster import node as real_node
from e2e.cluster import storage
from e2e.images.build import archive_digest, ensure_images, tags
from e2e.incluster import token_canary
from e2e.platform.conftest import RELEASE, helm_install
from e2e.platform.prometheus import Prometheus
from e2e.state_pvs import REAL_NS_PREFIX

NODE = real_node.NODE_NAME
TOLERATION = {**real_node.TAINT, "operator": "Equal"}


@pytest.fixture(scope="session")
def real_cluster(cluster):
    if not cluster.real_node:
        pytest.fail(
            "the session cluster has no real node: another session on this machine runs it "
            "(see e2e/cluster/node.py); run these tests with RLPOST_REAL_NODE=1 alone"
        )
    storage.ensure_local_volumes(cluster, NODE)
    return cluster


@pytest.fixture(scope="session")
def images(real_cluster) -> dict[str, str]:
    """Our three images, built from the Dockerfiles (cached) and imported into the node's
    containerd (never pulled: imagePullPolicy IfNotPresent finds them)."""
    archives = ensure_images()
    refs = tags()
    have = _digests(real_cluster)
    todo = {n: a for n, a in archives.items() if have.get(refs[n]) != archive_digest(a)}
    _enough_disk_for(real_cluster, list(todo.values()))
    for name, archive in todo.items():
        t0 = time.monotonic()
        real_node.import_image(archive, state=real_cluster.state)
        print(f"[images] {name}: imported into containerd in {time.monotonic() - t0:.0f} s")
    digests = _digests(real_cluster)
    wrong = {refs[n] for n, a in archives.items() if digests.get(refs[n]) != archive_digest(a)}
    assert not wrong, f"images not in containerd as built after import: {wrong}"
    # the kubelet admits no pod under DiskPressure: say so here, not as pods that never start
    on_node = real_node.pressure(real_cluster)
    assert not on_node, f"the real node reports {on_node}; {_disk_words(real_cluster)}"
    return {n: refs[n] for n in archives}


# What an image takes in containerd, unpacked, per byte of its zstd archive (measured: 7.2
# GB of archives unpack to 17 GiB), and what the kubelet keeps free (evictionHard
# nodefs/imagefs.available: 1 %, e2e/cluster/node.py).
UNPACKED_PER_ARCHIVE_BYTE = 2.5
GIB = 1 << 30


def _disk_words(cluster) -> str:
    free = real_node.free_bytes(cluster.state)
    return f"{free / GIB:.1f} GiB free on the filesystem of {cluster.state}"


def _enough_disk_for(cluster, archives) -> None:
    """Fail at once, saying how much disk is missing, when the images cannot fit: without
    room the kubelet reports DiskPressure and no pod of the suite would start."""
    if not archives:
        return
    sizes = [a.stat().st_size for a in archives]
    st = os.statvfs(real_node.node_dir(cluster.state))
    reserve = 0.01 * st.f_blocks * st.f_frsize + 2 * GIB
    need = UNPACKED_PER_ARCHIVE_BYTE * sum(sizes) + max(sizes) + reserve
    free = real_node.free_bytes(cluster.state)
    if free < need:
        pytest.fail(
            f"not enough disk for the real node's images: {[a.name for a in archives]} need "
            f"about {need / GIB:.1f} GiB free (unpacked, plus the import's copy and the "
            f"kubelet's reserve), {_disk_words(cluster)}; free some space (old clusters: "
            "python -m e2e.cluster down --state DIR; stale image archives in "
            "~/.cache/rlpost/images) and run again",
            pytrace=False,
        )


def _digests(cluster) -> dict[str, str]:
    """Image reference -> manifest digest, as the node's containerd has them."""
    out = real_node.ctr(cluster.state, "images", "ls").stdout.splitlines()[1:]
    return {cols[0]: cols[2] for line in out if len(cols := line.split()) >= 3}


@dataclass
class Tenant:
    namespace: str
    queue: str = "team-a"  # the LocalQueue's name: the one examples/ use
    operator_pod: dict = field(default_factory=dict)


@dataclass
class RealPlatform:
    suffix: str
    flavor: str
    cluster_queue: str
    tenants: list[Tenant]
    prometheus: Prometheus


def real_kueue_docs(suffix: str, namespaces: list[str]) -> list[dict]:
    """A flavor that selects (and tolerates) the real node, one ClusterQueue per tenant
    namespace covering cpu/memory/GPUs on it, and a LocalQueue `team-a` in each namespace."""
    flavor = f"real-{suffix}"
    docs: list[dict] = [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": flavor},
            "spec": {
                "nodeLabels": {"rlpost.dev/gpu-kind": "real"},
                "tolerations": [TOLERATION],
            },
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": f"high-{suffix}"},
            "value": 1000,
        },
    ]
    for ns in namespaces:
        docs += [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"rlpost.dev/tenant": ns}},
            },
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "ClusterQueue",
                "metadata": {"name": ns},
                "spec": {
                    "namespaceSelector": {"matchLabels": {"rlpost.dev/tenant": ns}},
                    "preemption": {"withinClusterQueue": "LowerPriority"},
                    "resourceGroups": [
                        {
                            "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                            "flavors": [
                                {
                                    "name": flavor,
                                    "resources": [
                                        {"name": "cpu", "nominalQuota": "2"},
                                        {"name": "memory", "nominalQuota": "16Gi"},
                                        {"name": "nvidia.com/gpu", "nominalQuota": 4},
                                    ],
                                }
                            ],
                        }
                    ],
                },
            },
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "LocalQueue",
                "metadata": {"name": "team-a", "namespace": ns},
                "spec": {"clusterQueue": ns},
            },
        ]
    return docs


def kill_container(cluster, pod: dict) -> int:
    """SIGKILL the main process of the pod's first container from the host (a container's
    init ignores a SIGKILL sent from inside its own pid namespace). Returns the host pid."""
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    out = real_node.ctr(cluster.state, "tasks", "ls").stdout.splitlines()[1:]
    pids = {cols[0]: int(cols[1]) for line in out if len(cols := line.split()) >= 2}
    os.kill(pids[cid], signal.SIGKILL)
    return pids[cid]


def operator_pod(cluster, ns: str) -> dict:
    pods = cluster.get_json(
        "pods",
        "-n",
        ns,
        "-l",
        f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=rlpost-operator",
    )["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    assert len(running) == 1, [p["status"] for p in pods]
    return running[0]


@pytest.fixture(scope="session")
def real_platform(real_cluster, images, tmp_path_factory):
    """Two tenants, each with the chart installed (operator pod on the real node) and a
    real Prometheus scraping both operator pods at their pod IPs."""
    sfx = uuid.uuid4().hex[:5]
    # (the prefix keeps the kwok suites' static-PV binders away from these namespaces)
    namespaces = [f"{REAL_NS_PREFIX}a-{sfx}", f"{REAL_NS_PREFIX}b-{sfx}"]
    docs = real_kueue_docs(sfx, namespaces)
    order = {"Namespace": 0, "ResourceFlavor": 1, "WorkloadPriorityClass": 1}
    real_cluster.apply(sorted(docs, key=lambda d: order.get(d["kind"], 2)))
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), scrape_jobs=("operator", "roles"))
    prom.start()
    tenants = [Tenant(ns) for ns in namespaces]
    installed: list[str] = []
    try:
        for t in tenants:
            helm_install(
                real_cluster,
                t.namespace,
                "--set-json",
                'nodeSelector={"rlpost.dev/node":"real"}',
                "--set-json",
                f"tolerations=[{_json(TOLERATION)}]",
            )
            installed.append(t.namespace)
            t.operator_pod = operator_pod(real_cluster, t.namespace)
        prom.set_targets(
            "operator",
            [
                (f"{t.operator_pod['status']['podIP']}:8080", {"namespace": t.namespace})
                for t in tenants
            ],
        )
        yield RealPlatform(sfx, f"real-{sfx}", namespaces[0], tenants, prom)
    finally:
        for ns in installed:
            real_cluster.helm("uninstall", RELEASE, "--namespace", ns, "--wait", check=False)
        prom.stop()
        for d in docs:
            if d["kind"] in ("ClusterQueue", "ResourceFlavor", "WorkloadPriorityClass"):
                real_cluster.kubectl(
                    "delete", d["kind"].lower(), d["metadata"]["name"], "--wait=false", check=False
                )
        real_cluster.kubectl("delete", "namespace", *namespaces, "--wait=false", check=False)


@pytest.fixture(scope="session", autouse=True)
def token_canary_ns(real_cluster, images):
    """The short-lived-token progress canary (token_canary.py), started with the session's
    first in-cluster test and checked by the last one. Yields its namespace."""
    ns = f"{REAL_NS_PREFIX}token-{uuid.uuid4().hex[:5]}"
    real_cluster.apply(
        token_canary.docs(ns, images["trainer"], {"kubernetes.io/hostname": NODE}, TOLERATION)
    )
    try:
        yield ns
    finally:
        real_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _json(d: dict) -> str:
    import json

    return json.dumps(d, separators=(",", ":"))


@pytest.fixture(autouse=True)
def report_on_failure(request):
    """When a test here fails: each tenant's jobs (status), pods, operator log and events,
    so a failure in CI says why without a rerun."""
    yield
    if not getattr(request.node, "rep_call_failed", False):
        return
    if "real_platform" not in request.fixturenames or "real_cluster" not in request.fixturenames:
        return
    c = request.getfixturevalue("real_cluster")
    platform = request.getfixturevalue("real_platform")
    out = []
    for t in platform.tenants:
        ns = t.namespace
        for args in (
            (
                "get",
                "rljob",
                "-n",
                ns,
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status}{'\\n'}{end}",
            ),
            ("get", "pods", "-n", ns, "-o", "wide"),
            ("logs", "-n", ns, "-l", "app.kubernetes.io/name=rlpost-operator", "--tail=40"),
            ("get", "events", "-n", ns, "--sort-by=.lastTimestamp"),
        ):
            r = c.kubectl(*args, check=False)
            out.append(f"$ kubectl {' '.join(args)}\n{(r.stdout + r.stderr)[-6000:]}")
    print("\n".join(out), file=sys.stderr)
