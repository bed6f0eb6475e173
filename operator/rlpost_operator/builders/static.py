"""Children that hold no compute (kept while the job is suspended or restarting): the
config and progress ConfigMaps, the token Secret, the ServiceAccount and its RBAC."""

from __future__ import annotations

import functools
import json
from typing import Any

import yaml

from rlpost import api

from .common import JobRef, names, object_meta, with_hash
from .network import build_network_policy, build_service


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
            "metadata": object_meta(ref, names(ref.name)["config"]),
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
        "metadata": object_meta(ref, names(ref.name)["progress"]),
        "data": {},
    }


def build_token_secret(ref: JobRef, token: str) -> dict[str, Any]:
    """Created once with a random token; never read back into status, logs or events."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": object_meta(ref, names(ref.name)["token"]),
        "stringData": {"token": token},
    }


def build_service_account(ref: JobRef) -> dict[str, Any]:
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": object_meta(ref, names(ref.name)["sa"]),
            "automountServiceAccountToken": False,
        }
    )


def build_role(ref: JobRef) -> dict[str, Any]:
    """The router discovers engine pods; the trainer patches only `<job>-progress`."""
    return with_hash(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": object_meta(ref, names(ref.name)["role"]),
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
            "metadata": object_meta(ref, n["role"]),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": n["role"]},
            "subjects": [{"kind": "ServiceAccount", "name": n["sa"], "namespace": ref.namespace}],
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
        build_service(ref),
    ]
