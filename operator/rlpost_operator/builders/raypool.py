"""The reward pool of `spec.reward.pool` (workers > 0): a Ray cluster that belongs to the job.

One podSet (`reward-pool`, count workers + 1) of the job's single Workload, so Kueue admits
it with the rest of the gang or not at all, charged to the tenant's CPU quota. Its pods:

- `<job>-ray-head` (1 pod): `ray start --head` with no task CPUs: the GCS, the Ray Client
  server the buffer connects to (`ray://<job>-ray-head.<job>:10001`, the driver then runs
  on the head), the dashboard (8265: `kubectl port-forward pod/<job>-ray-head 8265`) and
  metrics (8080);
- `<job>-ray-worker-<i>` (`workers` pods): `ray start --address=<job>-ray-head.<job>:6379`
  with ceil(cpusPerWorker) Ray CPUs each: the reward tasks run here.
The head is reached by its pod's DNS name (the job's headless Service, builders/network.py).

Head and worker pods request the same cpu (cpusPerWorker) and memory, so the podSet's one
template (a worker's) is what every pool pod requests: Kueue counts exactly what runs.
A pool pod that ends is created again by the operator; Ray re-runs the tasks a lost worker held
(`maxRetries`), and the buffer keeps one score per sample id (rewards/pool.py).
Why the operator's own pods and not a KubeRay RayCluster: docs/DESIGN.md ("Rewards").
"""

from __future__ import annotations

import math
from typing import Any

from rlpost import api

from ..constants import (
    RAY_AGENT_PORT,
    RAY_CLIENT_PORT,
    RAY_DASHBOARD_PORT,
    RAY_GCS_PORT,
    RAY_METRICS_PORT,
)
from .common import JobRef, host, names
from .security import container_security, pod_security

HEAD, WORKER = "head", "worker"
# Rewards pass strings and floats: the object store stays near Ray's minimum (75 MB), in a
# memory-backed /dev/shm of this size (the container default of 64 MiB is below it).
OBJECT_STORE_BYTES = 100 * 1024 * 1024
SHM_LIMIT = "256Mi"


def enabled(spec: api.RLPostTrainJobSpec) -> bool:
    return spec.reward.pool.workers > 0


def pool_image(spec: api.RLPostTrainJobSpec) -> str:
    """The pool runs the rollout image (it has `ray[default]` and the reward code)."""
    return spec.reward.pool.image or spec.rollout.image


def ray_cpus(spec: api.RLPostTrainJobSpec) -> int:
    """Task slots per worker: a reward task takes 1 Ray CPU; a fraction still runs one."""
    return max(1, math.ceil(spec.reward.pool.cpus_per_worker))


def cpu_quantity(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{round(cpus * 1000)}m"


def head_host(ref: JobRef) -> str:
    """The head pod's DNS name, `<job>-ray-head.<job>` (the job's headless Service)."""
    return host(ref.name, names(ref.name)["ray-head"])


def client_address(ref: JobRef) -> str:
    """RLPOST_RAY_ADDRESS of the buffer: the head pod's Ray Client server."""
    return f"ray://{head_host(ref)}:{RAY_CLIENT_PORT}"


def _resources(spec: api.RLPostTrainJobSpec) -> dict[str, Any]:
    pool = spec.reward.pool
    return {
        "requests": {"cpu": cpu_quantity(pool.cpus_per_worker), "memory": pool.memory},
        "limits": {"memory": pool.memory},
    }


def _common_args() -> list[str]:
    return [
        "--block",
        "--num-gpus=0",
        # Kubernetes expands $(POD_IP) from the env below: Ray advertises the pod's address.
        "--node-ip-address=$(POD_IP)",
        f"--metrics-export-port={RAY_METRICS_PORT}",
        f"--dashboard-agent-listen-port={RAY_AGENT_PORT}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        "--disable-usage-stats",
    ]


def head_argv() -> list[str]:
    return [
        "ray", "start", "--head", f"--port={RAY_GCS_PORT}", "--num-cpus=0",
        f"--ray-client-server-port={RAY_CLIENT_PORT}",
        "--include-dashboard=true", "--dashboard-host=0.0.0.0",
        f"--dashboard-port={RAY_DASHBOARD_PORT}", *_common_args(),
    ]  # fmt: skip


def worker_argv(ref: JobRef, spec: api.RLPostTrainJobSpec) -> list[str]:
    """Waits for the head's GCS port first (no crash loop, and no restarts counted against
    failurePolicy.maxRestarts, while the head starts), then joins it."""
    host = head_host(ref)
    wait = (
        "until python -c 'import socket,sys; socket.create_connection((sys.argv[1], "
        f"int(sys.argv[2])), 2)' {host} {RAY_GCS_PORT} 2>/dev/null; do sleep 2; done"
    )
    join = ["ray", "start", f"--address={host}:{RAY_GCS_PORT}", f"--num-cpus={ray_cpus(spec)}"]
    return ["sh", "-c", f"{wait}; exec {' '.join([*join, *_common_args()])}"]


def _probe(port: int, path: str) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }


def pool_pod_spec(ref: JobRef, spec: api.RLPostTrainJobSpec, node: str) -> dict[str, Any]:
    """The pod spec of a head (`node="head"`) or worker pod of the pool."""
    env: list[dict[str, Any]] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "RLPOST_JOB_NAME", "value": ref.name},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]
    ports = [
        {"name": "metrics", "containerPort": RAY_METRICS_PORT},
        {"name": "ray-agent", "containerPort": RAY_AGENT_PORT},
    ]
    if node == HEAD:
        command = head_argv()
        ports = [
            {"name": "gcs", "containerPort": RAY_GCS_PORT},
            {"name": "client", "containerPort": RAY_CLIENT_PORT},
            {"name": "dashboard", "containerPort": RAY_DASHBOARD_PORT},
            *ports,
        ]
        # Ray's own health endpoints (KubeRay probes the same): the GCS through the
        # dashboard on the head, the node's raylet through its dashboard agent on a worker.
        readiness = _probe(RAY_DASHBOARD_PORT, "/api/gcs_healthz")
    else:
        command = worker_argv(ref, spec)
        readiness = _probe(RAY_AGENT_PORT, "/api/local_raylet_healthz")
    container: dict[str, Any] = {
        "name": f"ray-{node}",
        "image": pool_image(spec),
        "command": command,
        "env": env,
        "ports": ports,
        "resources": _resources(spec),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        "readinessProbe": readiness,
        "securityContext": container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {
        "serviceAccountName": names(ref.name)["sa"],
        "automountServiceAccountToken": False,
        "securityContext": pod_security(),
        "terminationGracePeriodSeconds": 10,
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_LIMIT}}],
    }
