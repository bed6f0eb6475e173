"""Objects shaped like the API server's, for the pure builder/protocol tests."""

from __future__ import annotations

import copy
from typing import Any

from rlpost import api

GPU = "nvidia.com/gpu"

FLAVORS = {
    "gpu-a": {"metadata": {"name": "gpu-a"}, "spec": {"nodeLabels": {"rlpost.dev/gpu-kind": "a"}}},
    "gpu-b": {
        "metadata": {"name": "gpu-b"},
        "spec": {
            "nodeLabels": {"rlpost.dev/gpu-kind": "b"},
            "tolerations": [
                {
                    "key": "rlpost.dev/gpu-kind",
                    "operator": "Equal",
                    "value": "b",
                    "effect": "NoSchedule",
                }
            ],
        },
    },
    "cpu": {"metadata": {"name": "cpu"}, "spec": {}},
}


def job(name="j", ns="ns", status=None, **spec_overrides) -> dict[str, Any]:
    spec = {
        "queueName": "team-a",
        "model": {"config": {"hidden_size": 8}},
        "data": {"prompts": "p.jsonl"},
        "trainer": {"replicas": 2, "gpusPerPod": 4},
        "rollout": {"engines": 3, "gpusPerEngine": 2},
    }
    spec.update(spec_overrides)
    # what the API server stores: defaults filled in
    spec = api.RLPostTrainJobSpec.model_validate(spec).wire()
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": "uid-1",
            "generation": 1,
            "resourceVersion": "10",
            "labels": {"kueue.x-k8s.io/queue-name": spec.get("queueName", "default")},
        },
        "spec": spec,
        "status": copy.deepcopy(status) if status else {},
    }


def cond(ctype, status, reason="R", message=""):
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def admit(wl: dict[str, Any], gpu_flavor="gpu-a") -> dict[str, Any]:
    wl = copy.deepcopy(wl)
    assignments = []
    for ps in wl["spec"]["podSets"]:
        res = ps["template"]["spec"]["containers"][0]["resources"]["requests"]
        flavors = {"cpu": "cpu", "memory": "cpu"}
        if GPU in res:
            flavors[GPU] = gpu_flavor
        assignments.append({"name": ps["name"], "count": ps["count"], "flavors": flavors})
    wl["status"] = {
        "admission": {"clusterQueue": "team-a", "podSetAssignments": assignments},
        "conditions": [cond("QuotaReserved", "True"), cond("Admitted", "True", "Admitted")],
    }
    return wl


def stored(obj: dict[str, Any], rv="1") -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["resourceVersion"] = rv
    obj["metadata"]["generation"] = 1
    obj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    obj.pop("stringData", None)
    return obj


def pod(name, role, attempt="0", ready=True, failed=False, exit_code=None):
    """A live pod of job j's gang: the operator creates each one itself (owner: the job; an
    indexed pod `<job>-<role>-<i>` carries its ordinal as rlpost.dev/pod-index)."""
    status = {"phase": "Failed" if failed else "Running"}
    status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    if exit_code is not None:
        status["containerStatuses"] = [
            {"name": role, "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}}}
        ]
    labels = {
        "app.kubernetes.io/name": "rlpost",
        "app.kubernetes.io/instance": "j",
        "rlpost.dev/role": role,
        "rlpost.dev/attempt": attempt,
    }
    index = name.rsplit("-", 1)[-1]
    if index.isdigit():
        labels["rlpost.dev/pod-index"] = index
    owner = {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": "j", "uid": "uid-1"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "uid": f"u-{name}",
            "labels": labels,
            "ownerReferences": [{**owner, "controller": True, "blockOwnerDeletion": True}],
        },
        "status": status,
    }
