"""Our operator and KubeRay's Go operator (ray-operator v1.5.0), side by side on the same
local control plane, each run on a fresh cluster, one after the other.

    nice -n 10 .venv/bin/python benchmarks/peer_kuberay.py --jobs 200 --jobs 1000

The control plane is LocalCluster's (etcd, kube-apiserver, controller-manager, scheduler,
Kueue v0.19.2 with webhooks, kwok) with Kueue's `ray.io/rayjob` integration on and
KubeRay's CRDs served, for both sides. N jobs are created at once (16 client threads); each
asks for no GPUs and makes 4 pods (ours: trainer, rollout engine, router, buffer; KubeRay:
head + 3 workers in SidecarMode, or head + 2 workers + the submitter Job's pod with
--kuberay-mode k8sjob), admitted by Kueue through a ClusterQueue big enough for all.
Watches time every job on this machine's clock. Per run: wall to the last job's pods,
create → Workload and admission → all pods (p50/p99), the operator's own writes per job,
all API writes per job (kube-apiserver's apiserver_request_total), the operator's CPU
seconds and peak RSS, the idle minute, optionally the namespace's deletion. ray-operator
is built by benchmarks/peer/build_kuberay.sh (Go module proxy; skipped when built).
Results: benchmarks/results/peer_kuberay.json; docs/benchmarks-operator.md says more.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # benchmarks/ and the repo

from peer.report import table  # noqa: E402
from peer.run import run_one  # noqa: E402
from peer.sides import KUBERAY_VERSION, KubeRay, Ours, kuberay_binary  # noqa: E402
from scale_common import REPO, machine  # noqa: E402

from e2e.cluster.paths import versions  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add = p.add_argument
    add("--jobs", type=int, action="append", help="N, repeatable (default: 200 and 1000)")
    add("--side", choices=["ours", "kuberay", "both"], default="both")
    add(
        "--kcm-limits",
        choices=["default", "raised", "both"],
        default="both",
        help="kube-controller-manager's client limits: its defaults, or raised "
        "(--kube-api-qps=200 --kube-api-burst=400)",
    )
    add(
        "--kuberay-concurrency",
        action="append",
        help="ray-operator's --reconcile-concurrency: 'default' (1) or a number; "
        "repeatable, one run each (default: default)",
    )
    add("--kuberay-mode", choices=["sidecar", "k8sjob"], default="sidecar")
    add(
        "--ours-auth",
        choices=["admin", "sa", "both"],
        default="admin",
        help="our operator's credentials: the cluster admin (system:masters) or the Helm "
        "chart's ServiceAccount token (its RBAC; API Priority and Fairness as installed)",
    )
    add(
        "--ours-state",
        choices=["per-job", "shared", "both"],
        default="per-job",
        help="our jobs' state volume: the default `<job>-state` PVC per job (a PV bound to "
        "each: writes KubeRay's jobs, which keep no state, do not make), or one checkpoint "
        "PVC every job shares (checkpoint.pvc, each job in its own directory)",
    )
    add(
        "--kuberay-state",
        choices=["none", "per-job", "both"],
        default="none",
        help="KubeRay's jobs: no volume, or a PVC like ours' `<job>-state` that the user "
        "creates with each RayJob and the head pod mounts (the like-for-like of our default)",
    )
    add("--ours-workers", type=int, default=8, help="our operator's --workers (default 8)")
    add("--sa-token", action="store_true", help="also run ours on the chart's SA token")
    add("--teardown", action="store_true", help="then delete the namespace with every job")
    add("--timeout", type=float, default=900, help="seconds for all jobs' pods")
    add("--settle", type=float, default=10, help="settled: this long without an operator write")
    add("--idle", type=float, default=60, help="the idle window, seconds")
    add("--out", type=Path, default=REPO / "benchmarks" / "results" / "peer_kuberay.json")
    add("--logs", type=Path, default=Path("/tmp") / f"rlpost-peer-{time.strftime('%m%d-%H%M%S')}")
    a = p.parse_args(argv)
    if a.sa_token and a.ours_auth == "admin":
        a.ours_auth = "both"
    return a


def plan(a) -> list[tuple[int, str, object]]:
    limits = ["default", "raised"] if a.kcm_limits == "both" else [a.kcm_limits]
    auths = ["admin", "sa"] if a.ours_auth == "both" else [a.ours_auth]
    states = ["per-job", "shared"] if a.ours_state == "both" else [a.ours_state]
    runs = []
    for n in a.jobs or [200, 1000]:
        for lim in limits:
            if a.side in ("ours", "both"):
                runs += [
                    (n, lim, Ours(auth, st, a.ours_workers)) for st in states for auth in auths
                ]
            if a.side in ("kuberay", "both"):
                kstates = ["none", "per-job"] if a.kuberay_state == "both" else [a.kuberay_state]
                runs += [
                    (n, lim, KubeRay(c, a.kuberay_mode, ks))
                    for c in (a.kuberay_concurrency or ["default"])
                    for ks in kstates
                ]
    return runs


def main(argv=None) -> int:
    a = parse(argv)
    kuberay_binary()  # its module source also holds the CRDs both sides' clusters serve
    v = versions()
    result = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "versions": {
            "kubernetes": v["K8S_VERSION"],
            "kueue": v["KUEUE_VERSION"],
            "kwok": v["KWOK_VERSION"],
            "kuberay": KUBERAY_VERSION,
        },
        "args": " ".join(sys.argv[1:]),
        "runs": [],
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for i, (n, lim, side) in enumerate(plan(a)):
        workdir = a.logs / f"{i:02d}-{side.name}-{n}-{lim}"
        print(f"[peer] run {i}: {side.label()}, {n} jobs, {lim} limits; logs {workdir}",
              file=sys.stderr, flush=True)  # fmt: skip
        try:
            r = run_one(side, n, lim, a, workdir)
        except Exception as exc:  # the next runs still run; the JSON says what failed
            r = {"side": side.name, "label": side.label(), "settings": side.settings(),
                 "jobs": n, "kcm_limits": lim, "error": f"{type(exc).__name__}: {exc}",
                 "logs": str(workdir)}  # fmt: skip
        print(json.dumps(r), flush=True)
        result["runs"].append(r)
        a.out.write_text(json.dumps(result, indent=2) + "\n")  # after every run
    print(table(result["runs"]))
    print(a.out)
    return 1 if any("error" in r for r in result["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
