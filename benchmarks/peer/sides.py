"""The two operators of benchmarks/peer_kuberay.py, each behind the same small interface:
its job document, what it needs before the clock starts, its process, its own count of
API writes, and how its Workloads and pods map back to its jobs."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes
from scale_common import (
    SMALL,
    job_doc,
    label_sum,
    metric_sum,
    scrape,
    start_operator,
    stop_process,
)

from e2e.cluster.paths import cache_dir
from rlpost import api as rlpost_api
from rlpost.ports import free_port

INSTANCE = "app.kubernetes.io/instance"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUBERAY_VERSION = os.environ.get("KUBERAY_VERSION", "v1.5.0")
RAY_IMAGE = "rayproject/ray:2.52.0"  # never pulled: kwok nodes run nothing
OUR_WRITE_VERBS = ("create", "apply", "patch", "delete")
GO_WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def kuberay_binary() -> Path:
    """benchmarks/peer/build_kuberay.sh (skips the build when the binary exists)."""
    out = subprocess.run(
        ["bash", str(Path(__file__).with_name("build_kuberay.sh"))],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "KUBERAY_VERSION": KUBERAY_VERSION},
    )
    return Path(out.stdout.strip().splitlines()[-1])


def kuberay_crds() -> Path:
    mod = "github.com/ray-project/kuberay/ray-operator"
    return cache_dir() / "gomod" / f"{mod}@{KUBERAY_VERSION}" / "config" / "crd" / "bases"


class Side:
    name = ""
    expected_pods = 4
    job_api: tuple[str, str, str] = ("", "", "")  # group, version, plural
    proc: subprocess.Popen | None = None

    def label(self) -> str:
        return self.name

    def settings(self) -> dict:
        return {}

    def doc(self, name: str, ns: str) -> dict:
        raise NotImplementedError

    def prepare(self, cluster, api, ns: str, n: int, workdir: Path) -> None:
        """What the clock must not see: storage, credentials."""

    def start(self, cluster, ns: str, workdir: Path) -> None:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def writes(self) -> float:
        """The operator's own write requests so far (every response code)."""
        raise NotImplementedError

    def passes(self) -> float:
        """The operator's reconcile passes so far (every controller of it)."""
        raise NotImplementedError

    def workload_job(self, wl: dict) -> str | None:
        raise NotImplementedError

    def user_objects(self, name: str, ns: str) -> list[dict]:
        """Core objects a user creates with each job, just before it (none by default)."""
        return []

    def job_state(self, job: dict) -> str:
        """What the job's status says once the run settled (ours: its phase)."""
        return (job.get("status") or {}).get("phase") or "none"

    def pod_keys(self, pod: dict) -> list[tuple[str, str]]:
        """("job", name) or ("cluster", RayCluster name) keys the pod counts towards."""
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} operator exited with {self.proc.returncode}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc)


class Ours(Side):
    """python -m rlpost_operator --namespace <ns>: 4 pods per job (trainer 1, rollout 1
    engine, router, buffer), counted by app.kubernetes.io/instance=<job>."""

    name = "ours"
    job_api = ("rlpost.dev", "v1alpha1", "rlposttrainjobs")

    def __init__(self, auth: str = "admin", state: str = "per-job", workers: int = 8):
        self.auth = auth  # admin (system:masters) or sa (the Helm chart's ServiceAccount)
        self.state = state  # per-job `<job>-state` PVCs, or one shared checkpoint PVC
        self.workers = workers  # --workers (the operator's default: 8)
        self.kubeconfig: Path | None = None
        self.port = 0

    def label(self) -> str:
        out = "ours" if self.auth == "admin" else "ours (chart SA token)"
        out = out if self.state == "per-job" else f"{out}, shared checkpoint PVC"
        return out if self.workers == 8 else f"{out}, {self.workers} workers"

    def settings(self) -> dict:
        return {"auth": self.auth, "workers": self.workers, "state": self.state}

    def doc(self, name: str, ns: str) -> dict:
        doc = job_doc(name, ns)
        if self.state == "shared":
            doc["spec"]["checkpoint"] = {"pvc": SHARED_PVC}
        return doc

    def prepare(self, cluster, api, ns: str, n: int, workdir: Path) -> None:
        if self.state == "shared":
            shared_pvc(api, ns)
        else:
            pv_pool(api, ns, n)
        self.kubeconfig = cluster.kubeconfig
        if self.auth == "sa":
            self.kubeconfig = chart_sa_kubeconfig(cluster, ns, workdir)

    def start(self, cluster, ns: str, workdir: Path) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = start_operator(
            ns, self.port, self.kubeconfig, workdir / "ours.log", env, self.workers
        )

    def ready(self) -> bool:
        self.alive()
        return metric_sum(self.port, "rlpost_jobs") >= 0

    def writes(self) -> float:
        return metric_sum(self.port, "rlpost_api_requests_total", OUR_WRITE_VERBS)

    def passes(self) -> float:
        return metric_sum(self.port, "rlpost_reconcile_duration_seconds_count")

    def workload_job(self, wl: dict) -> str | None:
        return (wl["metadata"].get("labels") or {}).get(INSTANCE)

    def pod_keys(self, pod: dict) -> list[tuple[str, str]]:
        job = (pod["metadata"].get("labels") or {}).get(INSTANCE)
        return [("job", job)] if job else []


class KubeRay(Side):
    """KubeRay's ray-operator: one RayJob per job, admitted by Kueue's ray.io/rayjob.
    sidecar: SidecarMode, head (ray-head + KubeRay's submitter container) + 3 workers.
    k8sjob: K8sJobMode, head + 2 workers + the submitter Job's pod."""

    name = "kuberay"
    job_api = ("ray.io", "v1", "rayjobs")

    def job_state(self, job: dict) -> str:
        return (job.get("status") or {}).get("jobDeploymentStatus") or "none"

    def __init__(self, concurrency: str = "default", mode: str = "sidecar", state: str = "none"):
        self.concurrency = concurrency
        self.mode = mode
        # none: no volume (a RayJob keeps no state); per-job: the user creates a PVC like
        # ours' `<job>-state` with each RayJob, and the head pod mounts it.
        self.state = state
        self.port = 0

    def label(self) -> str:
        c = "1 (default)" if self.concurrency == "default" else self.concurrency
        return f"KubeRay c={c}" + (", a state PVC per job" if self.state == "per-job" else "")

    def settings(self) -> dict:
        return {
            "version": KUBERAY_VERSION,
            "reconcile_concurrency": self.concurrency,
            "submission_mode": {"sidecar": "SidecarMode", "k8sjob": "K8sJobMode"}[self.mode],
            "state": self.state,
        }

    def prepare(self, cluster, api, ns: str, n: int, workdir: Path) -> None:
        if self.state == "per-job":
            pv_pool(api, ns, n)

    def user_objects(self, name: str, ns: str) -> list[dict]:
        if self.state != "per-job":
            return []
        ours = rlpost_api.RLPostTrainJobSpec.model_validate(
            job_doc(name, ns)["spec"]
        ).checkpoint  # the same claim as ours' default
        return [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": f"{name}-state", "namespace": ns},
                "spec": {
                    "accessModes": [str(ours.access_mode)],
                    "resources": {"requests": {"storage": ours.size}},
                },
            }
        ]

    def doc(self, name: str, ns: str) -> dict:
        res = {"requests": dict(SMALL)}
        workers = 3 if self.mode == "sidecar" else 2
        spec = {
            "suspend": True,  # Kueue unsuspends it at admission
            "submissionMode": self.settings()["submission_mode"],
            "entrypoint": "python -c 'print(1)'",
            "shutdownAfterJobFinishes": True,  # Kueue's webhook requires it
            "rayClusterSpec": {
                "rayVersion": RAY_IMAGE.rsplit(":", 1)[1],
                "headGroupSpec": {
                    "rayStartParams": {},
                    "template": {
                        "spec": {
                            "containers": [
                                {"name": "ray-head", "image": RAY_IMAGE, "resources": res}
                            ]
                        }
                    },
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "workers",
                        "replicas": workers,
                        "minReplicas": workers,
                        "maxReplicas": workers,
                        "rayStartParams": {},
                        "template": {
                            "spec": {
                                "containers": [
                                    {"name": "ray-worker", "image": RAY_IMAGE, "resources": res}
                                ]
                            }
                        },
                    }
                ],
            },
        }
        if self.mode == "k8sjob":
            spec["submitterPodTemplate"] = {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "ray-job-submitter", "image": RAY_IMAGE, "resources": res}
                    ],
                }
            }
        if self.state == "per-job":
            head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
            head["volumes"] = [
                {"name": "state", "persistentVolumeClaim": {"claimName": f"{name}-state"}}
            ]
            head["containers"][0]["volumeMounts"] = [{"name": "state", "mountPath": "/state"}]
        return {
            "apiVersion": "ray.io/v1",
            "kind": "RayJob",
            "metadata": {"name": name, "namespace": ns, "labels": {QUEUE_LABEL: "bench"}},
            "spec": spec,
        }

    def start(self, cluster, ns: str, workdir: Path) -> None:
        self.port, probe = free_port(), free_port()
        args = [
            str(kuberay_binary()),
            f"--kubeconfig={cluster.kubeconfig}",
            f"--metrics-addr=127.0.0.1:{self.port}",
            f"--health-probe-bind-address=127.0.0.1:{probe}",
            "--enable-leader-election=false",
            f"--watch-namespace={ns}",
        ]
        if self.concurrency != "default":
            args.append(f"--reconcile-concurrency={self.concurrency}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        log = open(workdir / "kuberay.log", "wb")  # noqa: SIM115 - the child keeps it open
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def ready(self) -> bool:
        self.alive()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return r.status == 200

    def writes(self) -> float:
        text = scrape(f"http://127.0.0.1:{self.port}/metrics")
        return label_sum(text, "rest_client_requests_total", "method", GO_WRITE_METHODS)

    def passes(self) -> float:
        text = scrape(f"http://127.0.0.1:{self.port}/metrics")
        return label_sum(text, "controller_runtime_reconcile_total", "controller")

    def workload_job(self, wl: dict) -> str | None:
        for ref in wl["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "RayJob":
                return ref["name"]
        return None

    def pod_keys(self, pod: dict) -> list[tuple[str, str]]:
        labels = pod["metadata"].get("labels") or {}
        if "ray.io/cluster" in labels:
            return [("cluster", labels["ray.io/cluster"])]
        if self.mode == "k8sjob" and "batch.kubernetes.io/job-name" in labels:
            return [("job", labels["batch.kubernetes.io/job-name"])]  # Job name = RayJob's
        return []


SHARED_PVC = "checkpoints"


def shared_pvc(api, ns: str) -> None:
    """One PV and the checkpoint PVC bound to it that every job names (checkpoint.pvc; each
    job keeps its state in its own directory): made before the clock starts."""
    pv_pool(api, ns, 1)
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": SHARED_PVC},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "resources": {"requests": {"storage": "10Gi"}},
            },
        },
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pvc = core.read_namespaced_persistent_volume_claim(SHARED_PVC, ns)
        if pvc.status.phase == "Bound":
            return
        time.sleep(1)
    raise RuntimeError(f"PVC {ns}/{SHARED_PVC} not Bound in 60 s")


def pv_pool(api, ns: str, n: int) -> None:
    """n unbound hostPath PVs (10Gi RWO, no class) that the PV controller binds the jobs'
    `<job>-state` PVCs to, as a cluster with a provisioner would: the PVC is the operator's
    write, the binding the controller-manager's, and the pods can be scheduled."""
    core = kubernetes.client.CoreV1Api(api)

    def make(i: int) -> None:
        core.create_persistent_volume(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{ns}-state-{i:04d}", "labels": {"rlpost.dev/bench": ns}},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": f"/tmp/rlpost-bench-pvs/{ns}/{i}", "type": ""},
                },
            }
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(make, range(n)))


def chart_sa_kubeconfig(cluster, ns: str, workdir: Path) -> Path:
    """The chart's ServiceAccount and RBAC for watching `ns` (helm template, the kinds of
    templates/serviceaccount.yaml + rbac.yaml), a token for it, a kubeconfig with that
    token: the operator then runs with exactly what the chart grants, under API Priority
    and Fairness as a ServiceAccount (not system:masters)."""
    from e2e.platform.chart import render

    release_ns = "rlpost-system"
    cluster.kubectl("create", "namespace", release_ns)
    docs = render("rlpost", release_ns, {"watch": {"namespaces": [ns]}})
    keep = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    rbac = [d for d in docs if d["kind"] in keep]
    cluster.apply(rbac)
    sa = next(d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount")
    token = cluster.create_token(sa, release_ns, duration="6h")
    return cluster.kubeconfig_for_token(token, workdir / "operator-sa.kubeconfig")
