"""`python -m e2e.cluster up|down|status|env` (what `make cluster` / `cluster-down` run)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .localcluster import LocalCluster, default_state_dir
from .paths import bin_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__)
    p.add_argument("command", choices=["up", "down", "status", "env"])
    p.add_argument("--state", type=Path, default=default_state_dir(), help="state directory")
    p.add_argument(
        "--real-node",
        action="store_true",
        help="up: also start a real node (containerd, kubelet, kube-proxy, CoreDNS; root only)",
    )
    a = p.parse_args(argv)
    if a.command == "up":
        c = LocalCluster(state=a.state, real_node=a.real_node).up()
        print(f"export KUBECONFIG={c.kubeconfig}")
        print(f"export PATH={bin_dir()}:$PATH")
        return 0
    if a.command == "down":
        LocalCluster(state=a.state).down()
        return 0
    if not (a.state / "cluster.json").exists():
        print(f"no cluster recorded in {a.state}", file=sys.stderr)
        return 1
    c = LocalCluster.load(a.state)
    if a.command == "env":
        print(f"export KUBECONFIG={c.kubeconfig}")
        print(f"export PATH={bin_dir()}:$PATH")
    else:
        print(c.kubectl("get", "nodes,clusterqueues,workloads", "-A").stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
