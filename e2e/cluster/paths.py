"""Where the control-plane binaries and module sources live (outside the repo)."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def versions() -> dict[str, str]:
    out = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("RLPOST_CACHE", Path.home() / ".cache" / "rlpost"))


def bin_dir() -> Path:
    v = versions()
    key = (
        f"k8s-{v['K8S_VERSION']}_etcd-{v['ETCD_VERSION']}_kueue-{v['KUEUE_VERSION']}"
        f"_kwok-{v['KWOK_VERSION']}_helm-{v['HELM_VERSION']}"
        f"_containerd-{v['CONTAINERD_VERSION']}_coredns-{v['COREDNS_VERSION']}"
    )
    return cache_dir() / "bin" / key


def module_dir(module: str, version_key: str) -> Path:
    """Source of a Go module downloaded by build.sh (Kueue's CRDs, kwok's stages)."""
    return cache_dir() / "gomod" / f"{module}@{versions()[version_key]}"


BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kueue",
    "kwok",
    "helm",
)


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if not (bin_dir() / b).is_file()]
