"""A trainer progress channel on a short-lived token, for the whole in-cluster session.

The trainer's rank 0 patches `<job>-progress` with its ServiceAccount token
(rlpost_trainer.progress). A projected token expires and the kubelet rewrites the file
(at 80% of its life), so a run longer than the token's life must re-read it. The API server
refuses `expirationSeconds` under 600, so showing this takes more than ten minutes: longer
than any one job here. The canary is therefore started when the session's first in-cluster
test starts and checked by the last one, while the jobs run:

- a pod from the trainer image, as uid 10001, on the real node, whose ServiceAccount token
  is a projected volume with `expirationSeconds: 600`;
- it runs the trainer's own `ConfigMapProgress` (the class rank 0 uses) in a loop, patching
  `canary-progress` (a Role that may get/patch only that ConfigMap) every few seconds;
- each patch also records the HTTP status that the token the pod started with gets now, and
  how many times the channel re-read the token file.

The check: ten minutes later (and the API server's one-minute leeway) the first token is
refused (401), the patches go on (the last
one is seconds old) and the channel re-read the token.
"""

from __future__ import annotations

import calendar
import time

NAME = "canary"
TOKEN_SECONDS = 600  # the API server's minimum
# The API server still accepts a token this long past its expiry (go-jose's DefaultLeeway,
# which kube-apiserver's service-account validator uses: pkg/serviceaccount/claims.go).
LEEWAY_SECONDS = 60
MOUNT = "/var/run/secrets/rlpost-canary"

# Runs in the trainer image. The token value is never printed.
SCRIPT = f"""
import logging, ssl, sys, time
import httpx
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
from rlpost_trainer.progress import ConfigMapProgress
cm = ConfigMapProgress({NAME!r})
first = cm.token.value
ca = ssl.create_default_context(cafile={MOUNT!r} + "/ca.crt")
i = 0
while True:
    i += 1
    try:
        old = httpx.get(cm.url, headers={{"Authorization": "Bearer " + first}}, verify=ca,
                        timeout=10).status_code
    except httpx.HTTPError as e:
        old = type(e).__name__
    cm.write({{"step": str(i), "t": str(int(time.time())), "reloads": str(cm.token.reloads),
              "firstTokenStatus": str(old)}})
    time.sleep(5)
"""


def docs(namespace: str, image: str, node_selector: dict, toleration: dict) -> list[dict]:
    meta = {"name": NAME, "namespace": namespace}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta,
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{NAME}-progress", "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [f"{NAME}-progress"],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}],
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {
                "serviceAccountName": NAME,
                "automountServiceAccountToken": False,
                "nodeSelector": node_selector,
                "tolerations": [toleration],
                "restartPolicy": "Never",
                "securityContext": {
                    "runAsUser": 10001,
                    "runAsGroup": 10001,
                    "runAsNonRoot": True,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "progress",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python", "-c", SCRIPT],
                        "env": [{"name": "RLPOST_SERVICEACCOUNT_DIR", "value": MOUNT}],
                        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [{"name": "sa", "mountPath": MOUNT, "readOnly": True}],
                    }
                ],
                "volumes": [
                    {
                        "name": "sa",
                        "projected": {
                            "sources": [
                                {
                                    "serviceAccountToken": {
                                        "path": "token",
                                        "expirationSeconds": TOKEN_SECONDS,
                                    }
                                },
                                {
                                    "configMap": {
                                        "name": "kube-root-ca.crt",
                                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                    }
                                },
                                {
                                    "downwardAPI": {
                                        "items": [
                                            {
                                                "path": "namespace",
                                                "fieldRef": {"fieldPath": "metadata.namespace"},
                                            }
                                        ]
                                    }
                                },
                            ]
                        },
                    }
                ],
            },
        },
    ]


def started_at(cluster, namespace: str) -> float:
    """Unix time the canary's container started (it must be running)."""
    pod = cluster.get_json("pod", NAME, "-n", namespace)
    state = pod["status"]["containerStatuses"][0]["state"]
    assert "running" in state, pod["status"]
    return calendar.timegm(time.strptime(state["running"]["startedAt"], "%Y-%m-%dT%H:%M:%SZ"))
