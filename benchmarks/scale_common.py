"""Pieces of the operator-at-scale benchmark on the local control plane (peer_kuberay.py and
benchmarks/peer/): percentiles, Prometheus text, a process's CPU seconds and peak RSS, our
job document, a queue big enough for every job, our operator as a process, watches that
resume where they stopped, and kube-apiserver's own request counter."""

from __future__ import annotations

import os
import platform
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

import kubernetes

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SMALL = {"cpu": "10m", "memory": "16Mi"}
FLAVOR = "bench-cpu"
QUEUE = "bench"
# kube-apiserver's verbs that change something (apiserver_request_total{verb}).
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "APPLY")


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def r1(x):
    return None if x is None else round(x, 1)


# ---------------------------------------------------------------------- Prometheus text
def scrape(url: str, token: str | None = None, ctx: ssl.SSLContext | None = None) -> str:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
        return r.read().decode()


def samples(text: str, name: str) -> Iterable[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric `name` (label values without commas or
    escaped quotes, as the counters read here have)."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name) :]
        if rest.startswith("{"):
            body, _, value = rest[1:].rpartition("} ")
            labels = {}
            for part in body.split('",'):
                k, _, v = part.partition("=")
                if k:
                    labels[k.strip(",")] = v.strip('"')
        elif rest.startswith(" "):
            labels, value = {}, rest
        else:
            continue
        yield labels, float(value.split()[0])


def label_sum(text: str, name: str, label: str, values: Iterable[str] | None = None) -> float:
    want = None if values is None else set(values)
    return sum(v for lab, v in samples(text, name) if want is None or lab.get(label) in want)


def metric_sum(port: int, name: str, verbs=None) -> float:
    """Sum of `name` on http://127.0.0.1:<port>/metrics, over the given verbs (all: None)."""
    text = scrape(f"http://127.0.0.1:{port}/metrics")
    return label_sum(text, name, "verb", verbs)


# ---------------------------------------------------------------------- a process
def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
        f"{platform.system()} {platform.release()}"
    )


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------- our side
def job_doc(name: str, ns: str, queue: str = QUEUE) -> dict:
    """An RLPostTrainJob with no GPUs: trainer 1 pod, rollout 1 engine, router, buffer."""
    return {
        "apiVersion": "rlpost.dev/v1alpha1",
        "kind": "RLPostTrainJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "queueName": queue,
            "model": {"config": {"hidden_size": 8}},
            "data": {"prompts": "p.jsonl"},
            "trainer": {"replicas": 1, "gpusPerPod": 0, "resources": SMALL},
            "rollout": {
                "engines": 1,
                "gpusPerEngine": 0,
                "engine": "reference",
                "resources": SMALL,
            },
        },
    }


def flavor_doc() -> dict:
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ResourceFlavor",
        "metadata": {"name": FLAVOR},
        "spec": {},
    }


def queue_docs(ns: str, queue: str = QUEUE) -> list[dict]:
    """A ClusterQueue named after the namespace, big enough for every job, and its
    LocalQueue `queue` in the namespace."""
    return [
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
                                "name": FLAVOR,
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
            "metadata": {"name": queue, "namespace": ns},
            "spec": {"clusterQueue": ns},
        },
    ]


def start_operator(
    ns: str,
    port: int,
    kubeconfig: str | Path,
    log_path: Path,
    env: dict | None = None,
    workers: int = 8,
) -> subprocess.Popen:
    """`python -m rlpost_operator --namespace ns` as a process, its log in `log_path`."""
    log = open(log_path, "wb")  # noqa: SIM115 - the child keeps it open
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlpost_operator",
            "--namespace",
            ns,
            "--metrics-port",
            str(port),
            "--kubeconfig",
            str(kubeconfig),
            "--workers",
            str(workers),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=env,
    )


# ---------------------------------------------------------------------- the API
def api_client(kubeconfig: str | Path) -> kubernetes.client.ApiClient:
    cfg = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = 32
    return kubernetes.client.ApiClient(cfg)


def watch_forever(
    fn: Callable, args: tuple, on_event: Callable[[str, dict], None], stop: threading.Event
) -> None:
    """List+watch `fn(*args)` until `stop`, resuming from the last resourceVersion (a new
    list only after 410 Gone), calling on_event(type, object) for every event."""
    rv = None
    while not stop.is_set():
        w = kubernetes.watch.Watch()
        try:
            kw = {"timeout_seconds": 60, "allow_watch_bookmarks": True}
            if rv:
                kw["resource_version"] = rv
            for ev in w.stream(fn, *args, **kw):
                if stop.is_set():
                    return
                if ev["type"] != "BOOKMARK":
                    on_event(ev["type"], ev["raw_object"])
            rv = w.resource_version
        except kubernetes.client.ApiException as exc:
            if exc.status == 410:
                rv = None
            elif not stop.is_set():
                print(f"watch {args}: {exc.status} {exc.reason}", file=sys.stderr)
                time.sleep(0.5)
        except Exception as exc:  # reconnect
            if not stop.is_set():
                print(f"watch {args}: {exc}", file=sys.stderr)
            rv = w.resource_version or rv
            time.sleep(0.5)


def start_watches(
    specs: Iterable[tuple[Callable, tuple, Callable[[str, dict], None]]], stop: threading.Event
) -> None:
    for fn, args, cb in specs:
        threading.Thread(target=watch_forever, args=(fn, args, cb, stop), daemon=True).start()


class ApiserverMetrics:
    """kube-apiserver's /metrics, read with the cluster's admin token (system:masters)
    the way LocalCluster's own client authenticates: a bearer token, its CA."""

    def __init__(self, cluster):
        self.url = f"{cluster.server}/metrics"
        self.token = cluster.token
        self.ctx = ssl.create_default_context(cafile=str(cluster.state / "pki" / "ca.crt"))

    def writes(self) -> dict[str, float]:
        """Mutating requests so far: {"total": n, "<resource>": n, ...}."""
        text = scrape(self.url, self.token, self.ctx)
        out: dict[str, float] = {"total": 0.0}
        for lab, v in samples(text, "apiserver_request_total"):
            if lab.get("verb") not in WRITE_VERBS:
                continue
            key = lab.get("resource", "")
            if lab.get("subresource"):
                key += "/" + lab["subresource"]
            out["total"] += v
            out[key] = out.get(key, 0.0) + v
        return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def kcm_writes(cluster) -> float | None:
    """kube-controller-manager's own client writes (rest_client_requests_total by method)
    on its secure port (a self-signed serving cert; the admin token passes its delegated
    authentication and authorization). None when it cannot be read."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        text = scrape(f"https://127.0.0.1:{cluster.ports['kcm']}/metrics", cluster.token, ctx)
    except Exception as exc:
        print(f"kube-controller-manager metrics: {exc}", file=sys.stderr)
        return None
    return label_sum(text, "rest_client_requests_total", "method", WRITE_VERBS[:4])
