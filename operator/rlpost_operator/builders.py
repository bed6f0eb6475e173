"""Pure builders: (job, admission facts) -> Kubernetes manifests. No I/O here.

Every function returns a plain dict ready for server-side apply. The same pod templates
serve the Workload's podSets (what Kueue admits) and the children (what runs), so the
resources Kueue counted are the resources the pods request.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from rlpost import api

from .constants import (
    APP,
    ATTEMPT_LABEL,
    BUFFER_PORT,
    ENGINE_PORT,
    FIELD_MANAGER,
    GPU,
    HASH_ANNOTATION,
    INSTANCE_LABEL,
    KUEUE_GROUP,
    KUEUE_VERSION,
    MANAGED_BY_LABEL,
    MASTER_PORT,
    NAME_LABEL,
    PODSET_LABEL,
    QUEUE_LABEL,
    RESOURCE_IN_USE_FINALIZER,
    RESUME_ANNOTATION,
    ROLE_BUFFER,
    ROLE_LABEL,
    ROLE_ROLLOUT,
    ROLE_ROUTER,
    ROLE_TRAINER,
    ROLE_WORKER,
    ROUTER_PORT,
    TRAINER_METRICS_PORT,
)

CONFIG_MOUNT = "/etc/rlpost"
MODEL_MOUNT = "/models"
DATA_MOUNT = "/data"
CHECKPOINT_MOUNT = "/checkpoints"
STATE_MOUNT = "/state"


@dataclass(frozen=True)
class JobRef:
    """The identity of a job: what owner references and names are made of."""

    name: str
    namespace: str
    uid: str

    def owner_reference(self, controller: bool = True) -> dict[str, Any]:
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": controller,
            "blockOwnerDeletion": True,
        }


@dataclass
class PodSetUpdate:
    """What admission adds to one podSet's pods: flavors + admission-check updates."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class StartInfo:
    """Everything the children need beyond the spec, decided by the protocol."""

    updates: dict[str, PodSetUpdate] = field(default_factory=dict)
    resume_step: int | None = None
    attempt: int = 0


# ---------------------------------------------------------------------------- names


def names(job: str) -> dict[str, str]:
    return {
        "workload": f"rlposttrainjob-{job}",
        "config": f"{job}-config",
        "progress": f"{job}-progress",
        "token": f"{job}-token",
        "sa": f"{job}-rlpost",
        "role": f"{job}-rlpost",
        "trainer": f"{job}-trainer",
        "worker": f"{job}-worker",
        "rollout": f"{job}-rollout",
        "router": f"{job}-router",
        "buffer": f"{job}-buffer",
    }


def labels(job: str, role: str | None = None) -> dict[str, str]:
    out = {NAME_LABEL: APP, INSTANCE_LABEL: job, MANAGED_BY_LABEL: FIELD_MANAGER}
    if role:
        out[ROLE_LABEL] = role
    return out


def selector(job: str, role: str) -> dict[str, str]:
    return {NAME_LABEL: APP, INSTANCE_LABEL: job, ROLE_LABEL: role}


def spec_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """Stamp the object's content hash (compared before every apply: equal -> no write)."""
    obj.setdefault("metadata", {}).setdefault("annotations", {})
    obj["metadata"]["annotations"].pop(HASH_ANNOTATION, None)
    obj["metadata"]["annotations"][HASH_ANNOTATION] = spec_hash(obj)
    return obj


def _meta(
    ref: JobRef, name: str, role: str | None = None, controller: bool = True
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ref.namespace,
        "labels": labels(ref.name, role),
        "ownerReferences": [ref.owner_reference(controller)],
    }


# ---------------------------------------------------------------------------- pod groups


@dataclass(frozen=True)
class PodGroup:
    """One Kueue podSet: its name, pod count and GPUs per pod."""

    name: str
    count: int
    gpus: int


def pod_groups(spec: api.RLPostTrainJobSpec) -> list[PodGroup]:
    """disaggregated: trainer, rollout, router, buffer; colocated: worker, router, buffer
    (the worker pods hold trainer ranks AND an engine: GPUs requested once)."""
    if spec.mode == api.Mode.COLOCATED:
        groups = [PodGroup(ROLE_WORKER, spec.trainer.replicas, spec.trainer.gpus_per_pod)]
    else:
        groups = [
            PodGroup(ROLE_TRAINER, spec.trainer.replicas, spec.trainer.gpus_per_pod),
            PodGroup(ROLE_ROLLOUT, spec.rollout.engines, spec.rollout.gpus_per_engine),
        ]
    return [*groups, PodGroup(ROLE_ROUTER, 1, 0), PodGroup(ROLE_BUFFER, 1, 0)]


def _resources(res: api.Resources, gpus: int) -> dict[str, Any]:
    requests: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, str] = {"memory": res.memory}
    if gpus:
        requests[GPU] = str(gpus)
        limits[GPU] = str(gpus)
    return {"requests": requests, "limits": limits}


SMALL = api.Resources(cpu="500m", memory="1Gi")


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _volumes(ref: JobRef, spec: api.RLPostTrainJobSpec, shm: bool) -> tuple[list, list]:
    n = names(ref.name)
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": n["config"]}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
    ]
    if shm:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if spec.model.pvc:
        volumes.append(
            {
                "name": "model",
                "persistentVolumeClaim": {"claimName": spec.model.pvc, "readOnly": True},
            }
        )
        mounts.append({"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True})
    if spec.data.pvc:
        volumes.append(
            {
                "name": "data",
                "persistentVolumeClaim": {"claimName": spec.data.pvc, "readOnly": True},
            }
        )
        mounts.append({"name": "data", "mountPath": DATA_MOUNT, "readOnly": True})
    if spec.checkpoint.pvc:
        volumes.append(
            {"name": "checkpoints", "persistentVolumeClaim": {"claimName": spec.checkpoint.pvc}}
        )
        mounts.append({"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT})
    else:
        volumes.append({"name": "state", "emptyDir": {}})
        mounts.append({"name": "state", "mountPath": STATE_MOUNT})
    return volumes, mounts


def _state_dir(ref: JobRef, spec: api.RLPostTrainJobSpec, role: str) -> str:
    if spec.checkpoint.pvc:
        base = (
            f"{CHECKPOINT_MOUNT}/{spec.checkpoint.path.strip('/')}"
            if spec.checkpoint.path
            else (CHECKPOINT_MOUNT)
        )
        return f"{base}/{ref.name}/{role}"
    return f"{STATE_MOUNT}/{role}"


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


def _urls(ref: JobRef) -> list[dict[str, Any]]:
    n = names(ref.name)
    return [
        {"name": "RLPOST_BUFFER_URL", "value": f"http://{n['buffer']}:{BUFFER_PORT}"},
        {"name": "RLPOST_ROUTER_URL", "value": f"http://{n['router']}:{ROUTER_PORT}"},
        # Engines are the Ready pods behind this headless Service (one A record each).
        {"name": "RLPOST_ENGINE_SERVICE", "value": f"{n['rollout']}:{ENGINE_PORT}"},
    ]


def _probe(port: int, path: str) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": 10, "failureThreshold": 3}


def pod_spec(
    ref: JobRef, spec: api.RLPostTrainJobSpec, role: str, resume_step: int | None = None
) -> dict[str, Any]:
    """The pod spec of one role (no admission facts: those are merged by `apply_update`)."""
    n = names(ref.name)
    groups = {g.name: g for g in pod_groups(spec)}
    gpus = groups[role].gpus
    env = _common_env(ref, resume_step)
    shm = role in (ROLE_TRAINER, ROLE_WORKER, ROLE_ROLLOUT)
    volumes, mounts = _volumes(ref, spec, shm=shm)
    ports: list[dict[str, Any]] = []
    readiness = None
    if role in (ROLE_TRAINER, ROLE_WORKER):
        image = spec.trainer.image
        command = ["python", "-m", "rlpost_trainer"]
        res = spec.trainer.resources
        env += _urls(ref)
        env += [
            {"name": "RLPOST_STATE_DIR", "value": _state_dir(ref, spec, role)},
            {"name": "RLPOST_METRICS_PORT", "value": str(TRAINER_METRICS_PORT)},
            {"name": "RLPOST_MODE", "value": str(spec.mode)},
            {"name": "MASTER_ADDR", "value": f"{n[role]}-0.{n[role]}"},
            {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
            {
                "name": "RANK",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
                },
            },
            {"name": "WORLD_SIZE", "value": str(spec.trainer.replicas)},
            {"name": "LOCAL_RANK", "value": "0"},
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
        image = spec.rollout.image
        module = (
            "rlpost_rollout.launch_sglang"
            if spec.rollout.engine == api.EngineKind.SGLANG
            else "rlpost_rollout.engine"
        )
        command = ["python", "-m", module, "--port", str(ENGINE_PORT)]
        res = spec.rollout.resources
        env += [
            {"name": "NCCL_DEBUG", "value": "WARN"},
            {"name": "NCCL_SOCKET_IFNAME", "value": "eth0"},
        ]
        ports = [{"name": "http", "containerPort": ENGINE_PORT}]
        readiness = _probe(ENGINE_PORT, "/health")
    elif role == ROLE_ROUTER:
        image = spec.rollout.router.image
        command = ["python", "-m", "rlpost_rollout.router", "--port", str(ROUTER_PORT)]
        res = SMALL
        ports = [{"name": "http", "containerPort": ROUTER_PORT}]
        readiness = _probe(ROUTER_PORT, "/health")
    else:
        image = spec.rollout.image
        command = ["python", "-m", "rlpost_rollout.buffer", "--port", str(BUFFER_PORT)]
        res = SMALL
        env += [
            {"name": "RLPOST_ROUTER_URL", "value": f"http://{n['router']}:{ROUTER_PORT}"},
            {"name": "RLPOST_STATE_DIR", "value": _state_dir(ref, spec, role)},
        ]
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
        "securityContext": _container_security(),
    }
    if readiness:
        container["readinessProbe"] = readiness
    return {
        "serviceAccountName": n["sa"],
        "automountServiceAccountToken": role in (ROLE_TRAINER, ROLE_WORKER, ROLE_ROUTER),
        "securityContext": _pod_security(),
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
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
) -> dict[str, Any]:
    pod_labels = labels(ref.name, role)
    pod_labels[PODSET_LABEL] = role
    annotations: dict[str, str] = {}
    resume = None
    if start is not None:
        pod_labels[ATTEMPT_LABEL] = str(start.attempt)
        resume = start.resume_step
        if resume is not None:
            annotations[RESUME_ANNOTATION] = str(resume)
    tmpl: dict[str, Any] = {
        "metadata": {"labels": pod_labels},
        "spec": pod_spec(ref, spec, role, resume),
    }
    if annotations:
        tmpl["metadata"]["annotations"] = annotations
    if start is not None:
        apply_update(tmpl, start.updates.get(role))
    return tmpl


# ---------------------------------------------------------------------------- Workload


def build_workload(
    ref: JobRef, spec: api.RLPostTrainJobSpec, queue: str, priority: int | None = None
) -> dict[str, Any]:
    """ONE Workload for the whole gang: all podSets are admitted together or not at all."""
    pod_sets = []
    for g in pod_groups(spec):
        tmpl = pod_template(ref, spec, g.name)
        # Kueue keeps only labels/annotations in a podSet template's metadata.
        pod_sets.append({"name": g.name, "count": g.count, "template": tmpl})
    wl: dict[str, Any] = {
        "apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}",
        "kind": "Workload",
        "metadata": {
            **_meta(ref, names(ref.name)["workload"]),
            "finalizers": [RESOURCE_IN_USE_FINALIZER],
        },
        "spec": {"queueName": queue, "podSets": pod_sets, "active": not spec.suspend},
    }
    if spec.priority_class_name:
        wl["spec"]["priorityClassRef"] = {
            "group": KUEUE_GROUP,
            "kind": "WorkloadPriorityClass",
            "name": spec.priority_class_name,
        }
        # Kueue's webhook wants the class's value next to the reference (jobframework
        # copies it the same way).
        wl["spec"]["priority"] = int(priority or 0)
    # The hash covers what is immutable in a Workload (podSets, queue, priority), not
    # `active`, which follows spec.suspend.
    immutable = {k: v for k, v in wl["spec"].items() if k not in ("active", "priority")}
    wl["metadata"]["annotations"] = {HASH_ANNOTATION: spec_hash(immutable)}
    return wl


# ---------------------------------------------------------------------------- static children


def build_config_map(
    ref: JobRef, job_wire: dict[str, Any], resume_step: int | None
) -> dict[str, Any]:
    """The rendered job (wire format) every role reads at /etc/rlpost/job.yaml."""
    doc = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": ref.name, "namespace": ref.namespace},
        "spec": job_wire,
    }
    data = {"job.yaml": _render_yaml(json.dumps(doc, sort_keys=True))}
    data["resume-step"] = "" if resume_step is None else str(resume_step)
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(ref, names(ref.name)["config"]),
            "data": data,
        }
    )


@functools.lru_cache(maxsize=4096)
def _render_yaml(doc_json: str) -> str:
    """YAML of a document (memoized: a pass re-renders the same job many times)."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(json.loads(doc_json), Dumper=dumper, sort_keys=True)


def build_progress_config_map(ref: JobRef) -> dict[str, Any]:
    """Created empty, once; the trainer's rank 0 patches its data (docs/CONTRACTS.md)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ref, names(ref.name)["progress"]),
        "data": {},
    }


def build_token_secret(ref: JobRef, token: str) -> dict[str, Any]:
    """Created once with a random token; never read back into status, logs or events."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(ref, names(ref.name)["token"]),
        "stringData": {"token": token},
    }


def build_service_account(ref: JobRef) -> dict[str, Any]:
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(ref, names(ref.name)["sa"]),
            "automountServiceAccountToken": False,
        }
    )


def build_role(ref: JobRef) -> dict[str, Any]:
    """The router discovers engine pods; the trainer patches only `<job>-progress`."""
    return with_hash(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(ref, names(ref.name)["role"]),
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [names(ref.name)["progress"]],
                    "verbs": ["get", "patch"],
                },
            ],
        }
    )


def build_role_binding(ref: JobRef) -> dict[str, Any]:
    n = names(ref.name)
    return with_hash(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(ref, n["role"]),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": n["role"]},
            "subjects": [{"kind": "ServiceAccount", "name": n["sa"], "namespace": ref.namespace}],
        }
    )


def _service(
    ref: JobRef, name: str, role: str, port: int, headless: bool = False
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": selector(ref.name, role),
        "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
    }
    if headless:
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = role in (ROLE_TRAINER, ROLE_WORKER)
    return with_hash(
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(ref, name, role), "spec": spec}
    )


def build_services(ref: JobRef, spec: api.RLPostTrainJobSpec) -> list[dict[str, Any]]:
    n = names(ref.name)
    train_role = ROLE_WORKER if spec.mode == api.Mode.COLOCATED else ROLE_TRAINER
    out = [
        _service(ref, n[train_role], train_role, MASTER_PORT, headless=True),
        _service(ref, n["router"], ROLE_ROUTER, ROUTER_PORT),
        _service(ref, n["buffer"], ROLE_BUFFER, BUFFER_PORT),
    ]
    if spec.mode == api.Mode.DISAGGREGATED:
        out.append(_service(ref, n["rollout"], ROLE_ROLLOUT, ENGINE_PORT, headless=True))
    return out


def build_network_policy(ref: JobRef) -> dict[str, Any]:
    """Ingress to the job's pods only from the job's own pods (buffer, router, engines,
    trainer ranks): another job's pods cannot reach its buffer or engine control ports.
    The chart's namespace policy adds the operator and Prometheus (policies are a union)."""
    sel = {NAME_LABEL: APP, INSTANCE_LABEL: ref.name}
    return with_hash(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(ref, f"{ref.name}-intra-job"),
            "spec": {
                "podSelector": {"matchLabels": sel},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": sel}}]}],
            },
        }
    )


def build_static_children(
    ref: JobRef, spec: api.RLPostTrainJobSpec, job_wire: dict[str, Any]
) -> list[dict[str, Any]]:
    """Children that hold no compute: kept while the job is suspended or restarting."""
    return [
        build_service_account(ref),
        build_role(ref),
        build_role_binding(ref),
        build_network_policy(ref),
        *build_services(ref, spec),
    ]


# ---------------------------------------------------------------------------- compute children


def build_training_statefulset(
    ref: JobRef, spec: api.RLPostTrainJobSpec, start: StartInfo
) -> dict[str, Any]:
    role = ROLE_WORKER if spec.mode == api.Mode.COLOCATED else ROLE_TRAINER
    name = names(ref.name)[role]
    tmpl = pod_template(ref, spec, role, start)
    meta = _meta(ref, name, role)
    if start.resume_step is not None:
        meta["annotations"] = {RESUME_ANNOTATION: str(start.resume_step)}
    meta["labels"][ATTEMPT_LABEL] = str(start.attempt)
    return with_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": meta,
            "spec": {
                "serviceName": name,
                "replicas": spec.trainer.replicas,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": selector(ref.name, role)},
                "template": tmpl,
            },
        }
    )


def _deployment(
    ref: JobRef, spec: api.RLPostTrainJobSpec, role: str, replicas: int, start: StartInfo
) -> dict[str, Any]:
    meta = _meta(ref, names(ref.name)[role], role)
    meta["labels"][ATTEMPT_LABEL] = str(start.attempt)
    return with_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": selector(ref.name, role)},
                "strategy": {"type": "Recreate"},
                "template": pod_template(ref, spec, role, start),
            },
        }
    )


def build_buffer_pod(ref: JobRef, spec: api.RLPostTrainJobSpec, start: StartInfo) -> dict[str, Any]:
    tmpl = pod_template(ref, spec, ROLE_BUFFER, start)
    meta = _meta(ref, names(ref.name)["buffer"], ROLE_BUFFER)
    meta["labels"].update(tmpl["metadata"]["labels"])
    if tmpl["metadata"].get("annotations"):
        meta["annotations"] = dict(tmpl["metadata"]["annotations"])
    pod_spec_ = dict(tmpl["spec"])
    pod_spec_["restartPolicy"] = "Always"
    pod_spec_["hostname"] = names(ref.name)["buffer"]
    return with_hash({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec_})


def build_compute_children(
    ref: JobRef, spec: api.RLPostTrainJobSpec, start: StartInfo
) -> list[dict[str, Any]]:
    """The gang: created on admission, deleted on eviction/suspension/restart/finish."""
    out = [build_training_statefulset(ref, spec, start)]
    if spec.mode == api.Mode.DISAGGREGATED:
        out.append(_deployment(ref, spec, ROLE_ROLLOUT, spec.rollout.engines, start))
    out.append(_deployment(ref, spec, ROLE_ROUTER, 1, start))
    out.append(build_buffer_pod(ref, spec, start))
    return out


def expected_pods(spec: api.RLPostTrainJobSpec) -> int:
    return sum(g.count for g in pod_groups(spec))


# ---------------------------------------------------------------------------- admission facts


def podset_updates(
    workload: dict[str, Any], flavors: dict[str, dict[str, Any]]
) -> dict[str, PodSetUpdate]:
    """Per podSet: the assigned ResourceFlavors' nodeLabels/tolerations, then the admission
    checks' podSetUpdates (Kueue jobframework: podset.FromAssignment + FromUpdate)."""
    status = workload.get("status") or {}
    out: dict[str, PodSetUpdate] = {}
    for psa in (status.get("admission") or {}).get("podSetAssignments") or []:
        upd = out.setdefault(psa["name"], PodSetUpdate())
        seen: list[str] = []
        for flavor_name in (psa.get("flavors") or {}).values():
            if flavor_name in seen:
                continue
            seen.append(flavor_name)
            fspec = (flavors.get(flavor_name) or {}).get("spec") or {}
            upd.node_selector.update(fspec.get("nodeLabels") or {})
            for t in fspec.get("tolerations") or []:
                if t not in upd.tolerations:
                    upd.tolerations.append(t)
    for check in status.get("admissionChecks") or []:
        for psu in check.get("podSetUpdates") or []:
            upd = out.setdefault(psu["name"], PodSetUpdate())
            upd.labels.update(psu.get("labels") or {})
            upd.annotations.update(psu.get("annotations") or {})
            upd.node_selector.update(psu.get("nodeSelector") or {})
            for t in psu.get("tolerations") or []:
                if t not in upd.tolerations:
                    upd.tolerations.append(t)
    return out


def missing_flavors(workload: dict[str, Any], flavors: dict[str, dict[str, Any]]) -> list[str]:
    status = workload.get("status") or {}
    wanted = {
        f
        for psa in (status.get("admission") or {}).get("podSetAssignments") or []
        for f in (psa.get("flavors") or {}).values()
    }
    return sorted(wanted - set(flavors))


def job_queue_label(ref: JobRef, queue: str) -> dict[str, Any]:
    """The job's own metadata patch: Kueue's queue-name label (an apply of labels only)."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": ref.name, "namespace": ref.namespace, "labels": {QUEUE_LABEL: queue}},
    }
