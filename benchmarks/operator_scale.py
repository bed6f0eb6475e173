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
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from e2e.cluster import LocalCluster  # noqa: E402
from e2e.cluster.localcluster import free_port  # noqa: E402

CHILDREN = (
    "StatefulSet/{j}-trainer",
    "Deployment/{j}-rollout",
    "Deployment/{j}-router",
    "Pod/{j}-buffer",
    "ConfigMap/{j}-config",
    "Secret/{j}-token",
)


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


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

    def _watch(self, fn, args, kind: str):
        while not self.stop.is_set():
            try:
                w = kubernetes.watch.Watch()
                for ev in w.stream(fn, *args, timeout_seconds=60):
                    if self.stop.is_set():
                        return
                    self.on(kind, {"object": ev["raw_object"]})
            except Exception as exc:  # reconnect
                print(f"watch {kind}: {exc}", file=sys.stderr)
                time.sleep(0.5)

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
        apps = kubernetes.client.AppsV1Api(self.api)
        custom = kubernetes.client.CustomObjectsApi(self.api)
        lst = custom.list_namespaced_custom_object
        for fn, args, kind in [
            (lst, ("rlpost.dev", "v1alpha1", ns, "rlposttrainjobs"), "RLPostTrainJob"),
            (lst, ("kueue.x-k8s.io", "v1beta2", ns, "workloads"), "Workload"),
            (apps.list_namespaced_stateful_set, (ns,), "StatefulSet"),
            (apps.list_namespaced_deployment, (ns,), "Deployment"),
            (core.list_namespaced_pod, (ns,), "Pod"),
            (core.list_namespaced_config_map, (ns,), "ConfigMap"),
            (core.list_namespaced_secret, (ns,), "Secret"),
        ]:
            threading.Thread(target=self._watch, args=(fn, args, kind), daemon=True).start()

    def complete(self, job: str) -> float | None:
        got = self.children.get(job, {})
        if len(got) < len(CHILDREN):
            return None
        return max(got.values())


def job_doc(name: str, ns: str) -> dict:
    small = {"cpu": "10m", "memory": "16Mi"}
    return {
        "apiVersion": "rlpost.dev/v1alpha1",
        "kind": "RLPostTrainJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "queueName": "bench",
            "model": {"config": {"hidden_size": 8}},
            "data": {"prompts": "p.jsonl"},
            "trainer": {"replicas": 1, "gpusPerPod": 0, "resources": small},
            "rollout": {
                "engines": 1,
                "gpusPerEngine": 0,
                "engine": "reference",
                "resources": small,
            },
        },
    }


def metric_sum(port: int, name: str, verbs=None) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if verbs and not any(f'verb="{v}"' in line for v in verbs):
                continue
            total += float(line.rsplit(" ", 1)[1])
    return total


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_once(cluster: LocalCluster, n: int, timeout: float) -> dict:
    ns = f"bench-{n}-{uuid.uuid4().hex[:4]}"
    cluster.kubectl("create", "namespace", ns)
    cluster.apply(
        [
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "ClusterQueue",
                "metadata": {"name": ns},
                "spec": {
                    "namespaceSelector": {},
                    "resourceGroups": [
                        {
                            "coveredResources": ["cpu", "memory"],
                            "flavors": [
                                {
                                    "name": "bench-cpu",
                                    "resources": [
                                        {"name": "cpu", "nominalQuota": 100000},
                                        {"name": "memory", "nominalQuota": "100Ti"},
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
                "metadata": {"name": "bench", "namespace": ns},
                "spec": {"clusterQueue": ns},
            },
        ]
    )
    port = free_port()
    log = open(Path(tempfile.gettempdir()) / f"rlpost-bench-operator-{n}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlpost_operator",
            "--namespace",
            ns,
            "--metrics-port",
            str(port),
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
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
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
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
        cluster.apply(
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "ResourceFlavor",
                "metadata": {"name": "bench-cpu"},
                "spec": {},
            }
        )
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
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
        f"{platform.system()} {platform.release()}; shared with other work",
        "date": time.strftime("%Y-%m-%d"),
        "runs": runs,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
