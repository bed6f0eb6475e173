"""The pod spec and pod template of each role (env, command, ports, probes, resources)."""

from __future__ import annotations

from typing import Any

from rlpost import api

from ..constants import (
    ATTEMPT_LABEL,
    BUFFER_PORT,
    ENGINE_PORT,
    GPU,
    MASTER_PORT,
    POD_INDEX_LABEL,
    PODSET_LABEL,
    RAY_METRICS_PORT,
    RAY_NODE_LABEL,
    RESUME_ANNOTATION,
    ROLE_BUFFER,
    ROLE_POOL,
    ROLE_ROLLOUT,
    ROLE_ROUTER,
    ROLE_TRAINER,
    ROLE_WORKER,
    ROUTER_METRICS_PORT,
    ROUTER_PORT,
    TRAINER_METRICS_PORT,
)
from . import raypool
from .common import JobRef, PodSetUpdate, StartInfo, host, labels, names, pod_groups
from .security import container_security, pod_security
from .storage import CONFIG_MOUNT, checkpoint_dir, pod_volumes, state_dir


def _resources(res: api.Resources, gpus: int) -> dict[str, Any]:
    requests: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, str] = {"memory": res.memory}
    if gpus:
        requests[GPU] = str(gpus)
        limits[GPU] = str(gpus)
    return {"requests": requests, "limits": limits}


# Router and buffer: light processes (requests only; no CPU limit is set on any role).
SMALL = api.Resources(cpu="250m", memory="1Gi")

# Colocated worker pods: the engine container's name; the directory both containers use as
# TMPDIR (torch's shared-memory manager socket); the ServiceAccount token's directory,
# masked in the engine container.
ENGINE_CONTAINER = "engine"
IPC_DIR = "/var/run/rlpost-ipc"
IPC_MOUNT = {"name": "ipc", "mountPath": IPC_DIR}
IPC_TMPDIR = {"name": "TMPDIR", "value": IPC_DIR}
SA_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _common_env(ref: JobRef, resume_step: int | None) -> list[dict[str, Any]]:
    n = names(ref.name)
    env: list[dict[str, Any]] = [
        {"name": "RLPOST_CONFIG", "value": f"{CONFIG_MOUNT}/job.yaml"},
        {"name": "RLPOST_JOB_NAME", "value": ref.name},
        {
            "name": "RLPOST_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": n["token"], "key": "token"}},
        },
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    if resume_step is not None:
        env.append({"name": "RLPOST_RESUME_STEP", "value": str(resume_step)})
    return env


def engine_hosts(ref: JobRef, spec: api.RLPostTrainJobSpec) -> str:
    """RLPOST_ENGINE_SERVICE of a trainer: `host:port` of each engine pod, comma-separated
    (`<job>-rollout-<i>.<job>:30000`), each resolving once its pod has an address, Ready or
    not (an engine is Ready once the trainer pushed it weights)."""
    n = names(ref.name)
    return ",".join(
        f"{host(ref.name, f'{n[ROLE_ROLLOUT]}-{i}')}:{ENGINE_PORT}"
        for i in range(spec.rollout.engines)
    )


def _urls(ref: JobRef, spec: api.RLPostTrainJobSpec, role: str) -> list[dict[str, Any]]:
    buffer = f"http://{host(ref.name, names(ref.name)['buffer'])}:{BUFFER_PORT}"
    # A worker pod's trainer has one engine, its own pod's (a container next to it):
    # 127.0.0.1, and it too gets a push before it reports Ready.
    engines = f"127.0.0.1:{ENGINE_PORT}" if role == ROLE_WORKER else engine_hosts(ref, spec)
    return [
        {"name": "RLPOST_BUFFER_URL", "value": buffer},
        {"name": "RLPOST_ROUTER_URL", "value": router_url(ref)},
        {"name": "RLPOST_ENGINE_SERVICE", "value": engines},
    ]


def router_url(ref: JobRef) -> str:
    return f"http://{host(ref.name, names(ref.name)['router'])}:{ROUTER_PORT}"


def _probe(port: int, path: str) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": 10, "failureThreshold": 3}


def _engine_command(spec: api.RLPostTrainJobSpec) -> list[str]:
    module = (
        "rlpost_rollout.launch_sglang"
        if spec.rollout.engine == api.EngineKind.SGLANG
        else "rlpost_rollout.engine"
    )
    return ["python", "-m", module, "--port", str(ENGINE_PORT)]


def _engine_env() -> list[dict[str, Any]]:
    return [
        {"name": "NCCL_DEBUG", "value": "WARN"},
        {"name": "NCCL_SOCKET_IFNAME", "value": "eth0"},
        # Not Ready (so not routed to) until the trainer has pushed it weights.
        {"name": "RLPOST_WAIT_FOR_WEIGHTS", "value": "1"},
    ]


def _engine_readiness(spec: api.RLPostTrainJobSpec) -> dict[str, Any]:
    if spec.rollout.engine == api.EngineKind.SGLANG:
        # SGLang's own /health cannot wait for weights: ready once /model_info reports
        # a weight version the trainer pushed (rlpost_rollout.ready).
        return {
            "exec": {
                "command": ["python", "-m", "rlpost_rollout.ready", "--port", str(ENGINE_PORT)]
            },
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        }
    return _probe(ENGINE_PORT, "/health")


def _colocated_engine(
    ref: JobRef, spec: api.RLPostTrainJobSpec, resume_step: int | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A worker pod's engine container (the rollout Deployment's engine, same command and
    env) and the pod volumes it adds. The trainer container next to it pauses it, releases
    and resumes its memory and syncs weights over shared memory (transport ipc): torch's
    `file_system` tensors live in /dev/shm (the `dshm` memory emptyDir, mounted in both), and
    the trainer's torch_shm_manager socket, which the engine connects to by path, in
    TMPDIR: the `ipc` emptyDir, at the same path in both containers.
    Resources: spec.rollout.resources' cpu and memory, no GPU (a container cannot be given
    the trainer container's GPUs through the device plugin; docs/DESIGN.md), so the podSet
    counts the pod's GPUs once. The ServiceAccount token is masked: only the trainer uses it."""
    _, mounts = pod_volumes(ref, spec, shm=True, state=False)
    no_token = {"name": "no-sa-token", "mountPath": SA_TOKEN_DIR, "readOnly": True}
    mounts = [*mounts, dict(IPC_MOUNT), no_token]
    container = {
        "name": ENGINE_CONTAINER,
        "image": spec.rollout.image,
        "command": _engine_command(spec),
        "env": [*_common_env(ref, resume_step), *_engine_env(), dict(IPC_TMPDIR)],
        "ports": [{"name": "http", "containerPort": ENGINE_PORT}],
        "resources": _resources(spec.rollout.resources, 0),
        "volumeMounts": mounts,
        "securityContext": container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "readinessProbe": _engine_readiness(spec),
    }
    volumes = [{"name": "ipc", "emptyDir": {}}, {"name": "no-sa-token", "emptyDir": {}}]
    return container, volumes


def pod_spec(
    ref: JobRef, spec: api.RLPostTrainJobSpec, role: str, resume_step: int | None = None
) -> dict[str, Any]:
    """The pod spec of one role (no admission facts: those are merged by `apply_update`).
    The pool's role is a worker's spec (`pod_template` builds the head's)."""
    if role == ROLE_POOL:
        return raypool.pool_pod_spec(ref, spec, raypool.WORKER)
    n = names(ref.name)
    groups = {g.name: g for g in pod_groups(spec)}
    gpus = groups[role].gpus
    env = _common_env(ref, resume_step)
    shm = role in (ROLE_TRAINER, ROLE_WORKER, ROLE_ROLLOUT)
    # The state volume (checkpoints, buffer samples) only where state is kept.
    keeps_state = role in (ROLE_TRAINER, ROLE_WORKER, ROLE_BUFFER)
    volumes, mounts = pod_volumes(ref, spec, shm=shm, state=keeps_state)
    ports: list[dict[str, Any]] = []
    readiness = None
    if role in (ROLE_TRAINER, ROLE_WORKER):
        image = spec.trainer.image
        command = ["python", "-m", "rlpost_trainer"]
        res = spec.trainer.resources
        env += _urls(ref, spec, role)
        env += [
            {"name": "RLPOST_STATE_DIR", "value": state_dir(ref, spec, role)},
            {"name": "RLPOST_CHECKPOINT_DIR", "value": checkpoint_dir(ref, spec, role)},
            {"name": "RLPOST_METRICS_PORT", "value": str(TRAINER_METRICS_PORT)},
            {"name": "RLPOST_MODE", "value": str(spec.mode)},
            {"name": "MASTER_ADDR", "value": host(ref.name, f"{n[role]}-0")},
            {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
            # The gang: NNODES pods of NPROC_PER_NODE ranks; `python -m rlpost_trainer` starts
            # this pod's ranks and gives each RANK/WORLD_SIZE/LOCAL_RANK (rlpost_trainer.ranks).
            {
                "name": "RLPOST_POD_INDEX",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}},
            },
            {"name": "NNODES", "value": str(spec.trainer.replicas)},
            {"name": "NPROC_PER_NODE", "value": str(max(spec.trainer.gpus_per_pod, 1))},
            {"name": "NCCL_DEBUG", "value": "WARN"},
            {"name": "NCCL_SOCKET_IFNAME", "value": "eth0"},
            {"name": "TORCH_NCCL_ASYNC_ERROR_HANDLING", "value": "1"},
        ]
        ports = [
            {"name": "rendezvous", "containerPort": MASTER_PORT},
            {"name": "metrics", "containerPort": TRAINER_METRICS_PORT},
        ]
    elif role == ROLE_ROLLOUT:
        image, command, res = spec.rollout.image, _engine_command(spec), spec.rollout.resources
        env += _engine_env()
        ports = [{"name": "http", "containerPort": ENGINE_PORT}]
        readiness = _engine_readiness(spec)
    elif role == ROLE_ROUTER:
        image = spec.rollout.router.image
        command = [
            "python", "-m", "rlpost_rollout.router", "--port", str(ROUTER_PORT),
            "--prometheus-port", str(ROUTER_METRICS_PORT),
        ]  # fmt: skip
        res = SMALL
        ports = [
            {"name": "http", "containerPort": ROUTER_PORT},
            # The chart's PodMonitor scrapes ports named `metrics`.
            {"name": "metrics", "containerPort": ROUTER_METRICS_PORT},
        ]
        readiness = _probe(ROUTER_PORT, "/health")
    else:
        image = spec.rollout.image
        command = ["python", "-m", "rlpost_rollout.buffer", "--port", str(BUFFER_PORT)]
        res = SMALL
        env += [
            {"name": "RLPOST_ROUTER_URL", "value": router_url(ref)},
            {"name": "RLPOST_STATE_DIR", "value": state_dir(ref, spec, role)},
        ]
        if raypool.enabled(spec):  # custom/code_exec rewards on the job's Ray pool
            env.append({"name": "RLPOST_RAY_ADDRESS", "value": raypool.client_address(ref)})
        ports = [{"name": "http", "containerPort": BUFFER_PORT}]
        readiness = _probe(BUFFER_PORT, "/health")
    container: dict[str, Any] = {
        "name": role,
        "image": image,
        "command": command,
        "env": env,
        "ports": ports,
        "resources": _resources(res, gpus),
        "volumeMounts": mounts,
        "securityContext": container_security(),
        # A container that fails leaves its last log lines as its termination message: the
        # operator puts the last one in the job's status and Events.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if readiness:
        container["readinessProbe"] = readiness
    containers = [container]
    if role == ROLE_WORKER:  # colocated: the trainer ranks and their engine share the pod
        engine, extra = _colocated_engine(ref, spec, resume_step)
        container["env"].append(dict(IPC_TMPDIR))
        container["volumeMounts"].append(dict(IPC_MOUNT))
        containers.append(engine)
        volumes = [*volumes, *extra]
    return {
        "serviceAccountName": n["sa"],
        "automountServiceAccountToken": role in (ROLE_TRAINER, ROLE_WORKER, ROLE_ROUTER),
        "securityContext": pod_security(),
        "terminationGracePeriodSeconds": 30,
        "containers": containers,
        "volumes": volumes,
    }


def apply_update(template: dict[str, Any], upd: PodSetUpdate | None) -> dict[str, Any]:
    """Merge admission facts into a pod template (Kueue's podset.Merge: nodeSelector and
    labels/annotations merged, tolerations appended without duplicates)."""
    if upd is None:
        return template
    meta = template.setdefault("metadata", {})
    meta.setdefault("labels", {}).update(upd.labels)
    if upd.annotations:
        meta.setdefault("annotations", {}).update(upd.annotations)
    spec = template["spec"]
    if upd.node_selector:
        spec["nodeSelector"] = {**spec.get("nodeSelector", {}), **upd.node_selector}
    if upd.tolerations:
        tols = list(spec.get("tolerations", []))
        for t in upd.tolerations:
            if t not in tols:
                tols.append(t)
        spec["tolerations"] = tols
    return template


def pod_template(
    ref: JobRef,
    spec: api.RLPostTrainJobSpec,
    role: str,
    start: StartInfo | None = None,
    ray_node: str = raypool.WORKER,
) -> dict[str, Any]:
    """`ray_node` (head | worker) picks the pool pod of the `reward-pool` role; the podSet's
    template is a worker's (head and workers request the same)."""
    pod_labels = labels(ref.name, role)
    pod_labels[PODSET_LABEL] = role
    if role == ROLE_POOL:
        pod_labels[RAY_NODE_LABEL] = ray_node
    annotations: dict[str, str] = {}
    resume = None
    if start is not None:
        pod_labels[ATTEMPT_LABEL] = str(start.attempt)
        resume = start.resume_step
        if resume is not None:
            annotations[RESUME_ANNOTATION] = str(resume)
    tmpl: dict[str, Any] = {
        "metadata": {"labels": pod_labels},
        "spec": (
            raypool.pool_pod_spec(ref, spec, ray_node)
            if role == ROLE_POOL
            else pod_spec(ref, spec, role, resume)
        ),
    }
    metrics_port = {ROLE_ROUTER: ROUTER_METRICS_PORT, ROLE_POOL: RAY_METRICS_PORT}.get(role)
    if metrics_port:  # for Prometheus setups that scrape by annotation
        annotations.update(
            {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(metrics_port),
                "prometheus.io/path": "/metrics",
            }
        )
    if annotations:
        tmpl["metadata"]["annotations"] = annotations
    if start is not None:
        apply_update(tmpl, start.updates.get(role))
    return tmpl
