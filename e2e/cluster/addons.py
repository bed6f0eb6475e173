"""What runs on the control plane besides Kubernetes itself: Kueue (CRDs, manager with
webhooks) and kwok with its fake GPU nodes. LocalCluster calls these while it starts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from rlpost.ports import free_port

from . import kueue_manifests
from .paths import module_dir
from .procs import log

if TYPE_CHECKING:
    from .localcluster import LocalCluster

GPU = "nvidia.com/gpu"
# Two node groups that two ResourceFlavors select: 2 nodes x 8 GPUs each.
NODE_GROUPS = {"a": 2, "b": 2}
GPUS_PER_NODE = 8
# Nodes of kind b carry a taint; flavor gpu-b tolerates it (tests that tolerations flow).
GPU_B_TAINT = {"key": "rlpost.dev/gpu-kind", "value": "b", "effect": "NoSchedule"}


def install_kueue(cluster: LocalCluster, c: dict[str, Path]) -> None:
    wh = cluster.ports["webhook"]
    if cluster.extra_crds:  # what an extra framework needs, served before Kueue starts
        log("installing extra CRDs")
        docs = [yaml.safe_load(f.read_text()) for f in _crd_files(cluster.extra_crds)]
        cluster.apply(docs)
        for d in docs:
            name = d["metadata"]["name"]
            cluster.wait_for(f"CRD {name} Established", lambda n=name: established(cluster, n), 60)
    log("installing Kueue CRDs")
    cluster.kubectl("create", "namespace", "kueue-system")
    cluster.apply(kueue_manifests.crds(wh, c["ca"]))
    for crd in ("workloads", "clusterqueues", "localqueues", "resourceflavors"):
        cluster.wait_for(
            f"CRD {crd} Established",
            lambda p=crd: established(cluster, f"{p}.kueue.x-k8s.io"),
            60,
        )
    _ensure_kueue_metrics_certs(c["webhook_dir"])
    config = cluster.state / "kueue-config.yaml"
    frameworks = cluster.kueue_frameworks
    config.write_text(
        yaml.safe_dump(
            kueue_manifests.manager_config(
                wh, cluster.ports["health"], c["webhook_dir"], frameworks
            )
        )
    )
    log("starting Kueue (manager with webhooks)")
    cluster._spawn("kueue", [f"--config={config}", "--zap-log-level=info"])
    cluster._wait_http(f"http://127.0.0.1:{cluster.ports['health']}/readyz", "kueue", timeout=90)
    cluster._wait_tcp(wh, "kueue webhook server", timeout=60)
    # failurePolicy Fail: register the webhooks only once Kueue answers them.
    cluster.apply(kueue_manifests.webhook_configurations(wh, c["ca"], frameworks))


def _crd_files(paths) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(p.glob("*.yaml")) if p.is_dir() else [p])
    return out


def established(cluster: LocalCluster, name: str) -> bool:
    crd = cluster.get_json("crd", name)
    conds = crd.get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conds)


def start_kwok(cluster: LocalCluster, c: dict[str, Path]) -> None:
    stages_dir = module_dir("sigs.k8s.io/kwok", "KWOK_VERSION") / "kustomize" / "stage"
    stage_files = [
        stages_dir / "node" / "fast" / "node-initialize.yaml",
        *sorted((stages_dir / "node" / "heartbeat-with-lease").glob("*.yaml")),
        stages_dir / "pod" / "fast" / "pod-ready.yaml",
        stages_dir / "pod" / "fast" / "pod-complete.yaml",
        stages_dir / "pod" / "fast" / "pod-delete.yaml",
        stages_dir / "pod" / "chaos" / "pod-container-running-failed.yaml",
    ]
    docs = []
    for f in stage_files:
        docs.extend(d for d in yaml.safe_load_all(f.read_text()) if d)
    config = cluster.state / "kwok-stages.yaml"
    config.write_text(yaml.safe_dump_all(docs))
    log("starting kwok and creating fake GPU nodes")
    cluster._spawn(
        "kwok",
        [
            f"--kubeconfig={cluster.kubeconfig}",
            f"--config={config}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--cidr=10.244.0.0/16",
            "--node-ip=127.0.0.1",
            # kwok renews a Lease per node (as a kubelet would); without it the node
            # lifecycle controller marks the nodes, and so every pod, NotReady.
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{free_port()}",
            f"--tls-cert-file={c['cert']}",
            f"--tls-private-key-file={c['key']}",
        ],
    )
    cluster.apply([fake_gpu_node(g, i) for g, n in NODE_GROUPS.items() for i in range(n)])
    total = sum(NODE_GROUPS.values())
    cluster.wait_for(
        f"{total} Ready kwok nodes",
        lambda: (
            sum(
                1
                for n in cluster.get_json("nodes")["items"]
                for cond in n["status"].get("conditions", [])
                if cond["type"] == "Ready" and cond["status"] == "True"
            )
            == total
        ),
        timeout=60,
    )


def fake_gpu_node(group: str, index: int) -> dict:
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": f"gpu-{group}-{index}",
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": f"gpu-{group}-{index}",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "rlpost.dev/gpu-kind": group,
                "nvidia.com/gpu.product": {"a": "NVIDIA-H100", "b": "NVIDIA-H200"}[group],
            },
        },
        "spec": {"taints": [GPU_B_TAINT] if group == "b" else []},
        "status": {
            "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "110", GPU: str(GPUS_PER_NODE)},
            "capacity": {"cpu": "64", "memory": "512Gi", "pods": "110", GPU: str(GPUS_PER_NODE)},
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"},
        },
    }
    return node


def _ensure_kueue_metrics_certs(src: Path) -> None:
    """Kueue reads /etc/kueue/metrics/certs even with its metrics server off (v0.19)."""
    dst = Path("/etc/kueue/metrics/certs")
    if (dst / "tls.crt").exists() and (dst / "tls.key").exists():
        return
    try:
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("tls.crt", "tls.key"):
            (dst / name).write_bytes((src / name).read_bytes())
    except PermissionError as exc:
        raise RuntimeError(
            "Kueue needs /etc/kueue/metrics/certs/tls.{crt,key} to exist (any valid pair); "
            "create it once as root"
        ) from exc
