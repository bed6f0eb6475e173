"""The thin API layer: create, server-side apply, delete, merge patches, events, reads.

Built on the `kubernetes` client's ApiClient (auth, TLS, connection pool) with raw REST
paths, so one code path serves core, apps, rbac, Kueue and our own kind. Every request is
counted in `rlpost_api_requests_total{verb,code}`; bodies are never logged.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import kubernetes
import orjson

from . import metrics
from .constants import FIELD_MANAGER, KUEUE_GROUP, KUEUE_VERSION

log = logging.getLogger("rlpost.operator.kube")


@dataclass(frozen=True)
class Kind:
    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced:
            prefix += f"/namespaces/{namespace}"
        out = f"{prefix}/{self.plural}"
        if name:
            out += f"/{name}"
        if sub:
            out += f"/{sub}"
        return out


KINDS: dict[str, Kind] = {
    "ConfigMap": Kind("v1", "configmaps"),
    "Secret": Kind("v1", "secrets"),
    "Service": Kind("v1", "services"),
    "ServiceAccount": Kind("v1", "serviceaccounts"),
    "Pod": Kind("v1", "pods"),
    "PersistentVolumeClaim": Kind("v1", "persistentvolumeclaims"),
    "Event": Kind("v1", "events"),
    "Role": Kind("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Kind("rbac.authorization.k8s.io/v1", "rolebindings"),
    "NetworkPolicy": Kind("networking.k8s.io/v1", "networkpolicies"),
    "Workload": Kind(f"{KUEUE_GROUP}/{KUEUE_VERSION}", "workloads"),
    "LocalQueue": Kind(f"{KUEUE_GROUP}/{KUEUE_VERSION}", "localqueues"),
    "ClusterQueue": Kind(f"{KUEUE_GROUP}/{KUEUE_VERSION}", "clusterqueues", False),
    "Node": Kind("v1", "nodes", False),
    "StorageClass": Kind("storage.k8s.io/v1", "storageclasses", False),
    "Namespace": Kind("v1", "namespaces", False),
    "ResourceFlavor": Kind(f"{KUEUE_GROUP}/{KUEUE_VERSION}", "resourceflavors", False),
    "WorkloadPriorityClass": Kind(
        f"{KUEUE_GROUP}/{KUEUE_VERSION}", "workloadpriorityclasses", False
    ),
    "RLPostTrainJob": Kind("rlpost.dev/v1alpha1", "rlposttrainjobs"),
}

WRITE_VERBS = ("create", "apply", "patch", "delete")


class ApiError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


def load_config(kubeconfig: str | None) -> kubernetes.client.Configuration:
    cfg = kubernetes.client.Configuration()
    if kubeconfig:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    else:
        try:
            kubernetes.config.load_incluster_config(client_configuration=cfg)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=cfg)
    cfg.connection_pool_maxsize = 32
    return cfg


class Kube:
    def __init__(self, cfg: kubernetes.client.Configuration):
        self.cfg = cfg
        self.api = kubernetes.client.ApiClient(cfg)

    # ------------------------------------------------------------------ transport
    def request(
        self,
        verb: str,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> dict[str, Any] | None:
        method_, url, headers, body_, _ = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": accept},
            body=body,
            auth_settings=["BearerToken"],
        )
        code = "0"
        try:
            resp = self.api.call_api(
                method_, url, header_params=headers, body=body_, _request_timeout=30
            )
            resp.read()
            code = str(resp.status)
            data = resp.data
        except kubernetes.client.ApiException as exc:
            code = str(exc.status)
            metrics.API_REQUESTS.labels(verb=verb, code=code).inc()
            metrics.API_ERRORS.inc()
            raise ApiError(exc.status or 0, str(exc.body or exc.reason)) from exc
        metrics.API_REQUESTS.labels(verb=verb, code=code).inc()
        if resp.status >= 400:
            if resp.status != 404 and not (resp.status == 409 and verb == "create"):
                metrics.API_ERRORS.inc()
            raise ApiError(resp.status, data.decode(errors="replace") if data else "")
        return orjson.loads(data) if data else None

    # ------------------------------------------------------------------ reads
    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.request("get", "GET", KINDS[kind].path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(
        self, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        k = KINDS[kind]
        path = k.path(namespace) if (k.namespaced and namespace) else _cluster_path(k)
        query = [("labelSelector", label_selector)] if label_selector else []
        out = self.request("list", "GET", path, query=query) or {}
        items = out.get("items") or []
        for it in items:
            it.setdefault("kind", kind)
            it.setdefault("apiVersion", k.api_version)
        return items

    def list_metadata(
        self, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """The objects' metadata only (PartialObjectMetadataList: a Secret's data never
        travels), and the resourceVersion the LIST was answered at."""
        k = KINDS[kind]
        path = k.path(namespace) if (k.namespaced and namespace) else _cluster_path(k)
        query = [("labelSelector", label_selector)] if label_selector else []
        accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
        out = self.request("list", "GET", path, query=query, accept=accept) or {}
        items = out.get("items") or []
        for it in items:
            it["kind"] = kind
            it["apiVersion"] = k.api_version
        rv = (out.get("metadata") or {}).get("resourceVersion")
        return items, int(rv) if rv and rv.isdigit() else None

    # ------------------------------------------------------------------ writes
    def apply(self, obj: dict[str, Any], namespace: str) -> dict[str, Any] | None:
        """Server-side apply, fieldManager rlpost-operator, conflicts forced."""
        k = KINDS[obj["kind"]]
        return self.request(
            "apply",
            "PATCH",
            k.path(namespace, obj["metadata"]["name"]),
            body=obj,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    def create(self, obj: dict[str, Any], namespace: str) -> dict[str, Any] | None:
        """POST; None when it exists already (409)."""
        k = KINDS[obj["kind"]]
        try:
            return self.request(
                "create",
                "POST",
                k.path(namespace),
                body=obj,
                query=[("fieldManager", FIELD_MANAGER)],
            )
        except ApiError as exc:
            if exc.status == 409:
                return None  # already there: created by an earlier pass
            raise

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            self.request(
                "delete",
                "DELETE",
                KINDS[kind].path(namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except ApiError as exc:
            if exc.status != 404:
                raise

    def merge_patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any], status: bool = False
    ) -> dict[str, Any] | None:
        return self.request(
            "patch",
            "PATCH",
            KINDS[kind].path(namespace, name, "status" if status else None),
            body=patch,
            query=[("fieldManager", FIELD_MANAGER)],
            content_type="application/merge-patch+json",
        )

    def event(
        self,
        involved: dict[str, Any],
        etype: str,
        reason: str,
        message: str,
        name: str | None = None,
    ) -> None:
        """Record an Event. A given `name` makes it idempotent: posting it twice (a retry,
        or a restarted operator redoing a transition) leaves one Event."""
        meta = involved["metadata"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": name or f"{meta['name']}.{uuid.uuid4().hex[:12]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": etype,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.request("create", "POST", KINDS["Event"].path(meta["namespace"]), body=body)
        except ApiError as exc:
            if exc.status != 409:
                raise


def _cluster_path(k: Kind) -> str:
    prefix = "/api/v1" if k.api_version == "v1" else f"/apis/{k.api_version}"
    return f"{prefix}/{k.plural}"
