"""Watches that time each job on this machine's monotonic clock, as events arrive: the
job's creation, its Workload's creation and Admitted condition, and the first sighting of
each of its pods. Pods are matched to jobs by labels only (side.pod_keys), never by the
names or kinds of what created them."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import kubernetes
from scale_common import start_watches

from peer.sides import Side


class Recorder:
    def __init__(self, api: kubernetes.client.ApiClient, ns: str, side: Side):
        self.api, self.ns, self.side = api, ns, side
        self.created: dict[str, float] = {}
        self.workload: dict[str, float] = {}
        self.admitted: dict[str, float] = {}
        self.pods: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        # ... and when each was first seen Running (scheduled, bound, started: kwok)
        self.running: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        self.job_clusters: dict[str, set[str]] = defaultdict(set)  # RayJob -> RayClusters
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def start(self) -> Recorder:
        core = kubernetes.client.CoreV1Api(self.api)
        lst = kubernetes.client.CustomObjectsApi(self.api).list_namespaced_custom_object
        group, version, plural = self.side.job_api
        specs = [
            (lst, (group, version, self.ns, plural), self._job),
            (lst, ("kueue.x-k8s.io", "v1beta2", self.ns, "workloads"), self._workload),
            (core.list_namespaced_pod, (self.ns,), self._pod),
        ]
        if self.side.name == "kuberay":
            specs.append((lst, ("ray.io", "v1", self.ns, "rayclusters"), self._raycluster))
        start_watches(specs, self.stop)
        return self

    # ------------------------------------------------------------------ events
    def _job(self, typ: str, obj: dict) -> None:
        t = time.monotonic()
        with self.lock:
            self.created.setdefault(obj["metadata"]["name"], t)

    def _workload(self, typ: str, obj: dict) -> None:
        t = time.monotonic()
        job = self.side.workload_job(obj)
        if not job:
            return
        conds = (obj.get("status") or {}).get("conditions") or []
        with self.lock:
            self.workload.setdefault(job, t)
            if any(c["type"] == "Admitted" and c["status"] == "True" for c in conds):
                self.admitted.setdefault(job, t)

    def _pod(self, typ: str, obj: dict) -> None:
        t = time.monotonic()
        name = obj["metadata"]["name"]
        up = (obj.get("status") or {}).get("phase") == "Running"
        with self.lock:
            for key in self.side.pod_keys(obj):
                self.pods[key].setdefault(name, t)
                if up:
                    self.running[key].setdefault(name, t)

    def _raycluster(self, typ: str, obj: dict) -> None:
        meta = obj["metadata"]
        job = (meta.get("labels") or {}).get("ray.io/originated-from-cr-name")
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") == "RayJob":
                job = ref["name"]
        if job:
            with self.lock:
                self.job_clusters[job].add(meta["name"])

    # ------------------------------------------------------------------ per job (hold lock)
    def pods_of(self, job: str, seen: dict | None = None) -> dict[str, float]:
        seen = self.pods if seen is None else seen
        out = dict(seen.get(("job", job), {}))
        for c in self.job_clusters.get(job, ()):
            out.update(seen.get(("cluster", c), {}))
        return out

    def complete(self, job: str, running: bool = False) -> float | None:
        """When the job's expected-th pod was first seen (running: first seen Running;
        None: not yet)."""
        ts = sorted(self.pods_of(job, self.running if running else None).values())
        n = self.side.expected_pods
        return ts[n - 1] if len(ts) >= n else None

    def timings(self, names: list[str]) -> dict:
        """Per-job seconds: creation -> Workload, admission -> all pods (made, and
        Running); the last job's pods (monotonic time)."""
        with self.lock:
            done = {j: self.complete(j) for j in names}
            up = {j: self.complete(j, running=True) for j in names}
            c2w = [  # two watches race: a Workload seen before its job counts as 0
                max(0.0, self.workload[j] - self.created[j])
                for j in names
                if j in self.workload and j in self.created
            ]
            a2p = [
                done[j] - self.admitted[j]
                for j in names
                if done[j] is not None and j in self.admitted
            ]
            a2r = [
                up[j] - self.admitted[j] for j in names if up[j] is not None and j in self.admitted
            ]
            finished = [t for t in done.values() if t is not None]
            running = [t for t in up.values() if t is not None]
        return {
            "complete": len(finished),
            "last": max(finished) if finished else None,
            "running": len(running),
            "last_running": max(running) if running else None,
            "a2r": a2r,
            "c2w": c2w,
            "a2p": a2p,
            "admitted": sum(1 for j in names if j in self.admitted),
        }
