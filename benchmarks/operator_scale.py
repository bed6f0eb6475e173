"""Operator at scale on the local control plane: N RLPostTrainJobs at once.

    .venv/bin/python benchmarks/operator_scale.py --jobs 200 --jobs 1000

Per run (a fresh namespace, a ClusterQueue big enough for every job, the operator as a
process): time from a job's creation to its Workload, from Kueue's admission to all of
the job's children existing (p50/p99), API writes per job (the operator's own request
counter), and the operator's peak RSS (VmHWM). Jobs request no GPUs so that every one is
admitted: what is measured is the operator, not the quota. Watches (not polls) time
everything, on this machine's clock. Results: benchmarks/results/operator_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_common import (  # noqa: E402
    REPO,
    flavor_doc,
    job_doc,
    machine,
    metric_sum,
    pct,
    queue_docs,
    start_operator,
    start_watches,
    stop_process,
    vm_hwm_mib,
)

from e2e.cluster import LocalCluster  # noqa: E402
from e2e.cluster.localcluster import free_port  # noqa: E402

CHILDREN = (
    # the gang is the operator's own pods (no StatefulSet or Deployment in between)
    "Pod/{j}-trainer-0",
    "Pod/{j}-rollout-0",
    "Pod/{j}-router",
    "Pod/{j}-buffer",
    "ConfigMap/{j}-config",
    "Secret/{j}-token",
)


class Recorder:
    def __init__(self, kubeconfig: str, ns: str):
        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        self.api = kubernetes.client.ApiClient(cfg)
        self.ns = ns
        self.created: dict[str, float] = {}
        self.workload: dict[str, float] = {}
        self.admitted: dict[str, float] = {}
        self.children: dict[str, dict[str, float]] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def on(self, kind: str, ev: dict) -> None:
        t = time.monotonic()
        obj = ev["object"]
        name = obj["metadata"]["name"]
        with self.lock:
            if kind == "RLPostTrainJob":
                self.created.setdefault(name, t)
            elif kind == "Workload":
                job = obj["metadata"].get("labels", {}).get("app.kubernetes.io/instance")
                if not job:
                    return
                self.workload.setdefault(job, t)
                conds = (obj.get("status") or {}).get("conditions") or []
                if any(c["type"] == "Admitted" and c["status"] == "True" for c in conds):
                    self.admitted.setdefault(job, t)
            else:
                job = obj["metadata"].get("labels", {}).get("app.kubernetes.io/instance")
                if job and f"{kind}/{name}" in [c.format(j=job) for c in CHILDREN]:
                    self.children.setdefault(job, {}).setdefault(f"{kind}/{name}", t)

    def start(self):
        ns = self.ns
        core = kubernetes.client.CoreV1Api(self.api)
        custom = kubernetes.client.CustomObjectsApi(self.api)
        lst = custom.list_namespaced_custom_object
        watches = [
            (lst, ("rlpost.dev", "v1alpha1", ns, "rlposttrainjobs"), "RLPostTrainJob"),
            (lst, ("kueue.x-k8s.io", "v1beta2", ns, "workloads"), "Workload"),
            (core.list_namespaced_pod, (ns,), "Pod"),
            (core.list_namespaced_config_map, (ns,), "ConfigMap"),
            (core.list_namespaced_secret, (ns,), "Secret"),
        ]
        start_watches(
            [
                (fn, args, lambda _t, obj, kind=kind: self.on(kind, {"object": obj}))
                for fn, args, kind in watches
            ],
            self.stop,
        )

    def complete(self, job: str) -> float | None:
        got = self.children.get(job, {})
        if len(got) < len(CHILDREN):
            return None
        return max(got.values())


def run_once(cluster: LocalCluster, n: int, timeout: float) -> dict:
    ns = f"bench-{n}-{uuid.uuid4().hex[:4]}"
    cluster.kubectl("create", "namespace", ns)
    cluster.apply(queue_docs(ns))
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"rlpost-bench-operator-{n}.log"
    proc = start_operator(ns, port, cluster.kubeconfig, log)
    rec = Recorder(str(cluster.kubeconfig), ns)
    rec.start()
    try:
        cluster.wait_for("operator metrics", lambda: metric_sum(port, "rlpost_jobs") >= 0, 30)
        time.sleep(2)
        t0 = time.monotonic()
        docs = [job_doc(f"j{i:04d}", ns) for i in range(n)]
        # Created the way many users would: concurrently, straight to the API (kubectl's
        # client-side apply is a GET + POST per object and dominates on a busy box).
        custom = kubernetes.client.CustomObjectsApi(rec.api)

        def create(doc):
            custom.create_namespaced_custom_object(
                "rlpost.dev", "v1alpha1", ns, "rlposttrainjobs", doc
            )

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(create, docs))
        submit_s = time.monotonic() - t0
        names = [d["metadata"]["name"] for d in docs]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with rec.lock:
                done = sum(1 for j in names if rec.complete(j) is not None)
            if done == n:
                break
            time.sleep(1)
        wall = time.monotonic() - t0
        time.sleep(5)  # the Running status writes of the last pods
        with rec.lock:
            c2w = [
                rec.workload[j] - rec.created[j]
                for j in names
                if j in rec.workload and j in rec.created
            ]
            a2c = [
                rec.complete(j) - rec.admitted[j]
                for j in names
                if j in rec.admitted and rec.complete(j) is not None
            ]
            complete = sum(1 for j in names if rec.complete(j) is not None)
        writes = metric_sum(
            port, "rlpost_api_requests_total", ("create", "apply", "patch", "delete")
        )
        reads = metric_sum(port, "rlpost_api_requests_total", ("get", "list"))
        rss = vm_hwm_mib(proc.pid)
        return {
            "jobs": n,
            "jobs_with_all_children": complete,
            "submit_seconds": round(submit_s, 1),
            "wall_seconds_to_all_children": round(wall, 1),
            "create_to_workload_s": {"p50": pct(c2w, 50), "p99": pct(c2w, 99)},
            "admission_to_all_children_s": {"p50": pct(a2c, 50), "p99": pct(a2c, 99)},
            "api_writes_per_job": round(writes / n, 2),
            "api_reads_total": reads,
            "operator_peak_rss_mib": round(rss, 1),
            "mean_create_to_workload_s": statistics.fmean(c2w) if c2w else None,
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        }
    finally:
        rec.stop.set()
        stop_process(proc)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "clusterqueue", ns, "--wait=false", check=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, action="append")
    p.add_argument("--timeout", type=float, default=480)
    p.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "operator_scale.json"
    )
    a = p.parse_args()
    reuse = os.environ.get("RLPOST_CLUSTER_STATE")
    cluster = (
        LocalCluster.load(Path(reuse))
        if reuse
        else LocalCluster(state=Path(tempfile.mkdtemp(prefix="rlpost-bench-"))).up()
    )
    try:
        cluster.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(REPO / "crds" / "rlposttrainjobs.rlpost.dev.yaml"),
        )
        time.sleep(2)
        cluster.apply(flavor_doc())
        runs = []
        for n in a.jobs or [200, 1000]:
            r = run_once(cluster, n, a.timeout)
            print(json.dumps(r), flush=True)
            runs.append(r)
            time.sleep(20)
    finally:
        if not reuse:
            cluster.down()
    result = {
        "machine": f"{machine()}; shared with other work",
        "date": time.strftime("%Y-%m-%d"),
        "runs": runs,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
