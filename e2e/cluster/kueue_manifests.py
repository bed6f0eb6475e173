"""Kueue's CRDs, webhook configurations and manager config, pointed at loopback.

Read from Kueue's own module source (downloaded by build.sh) and rewritten the way envtest
does it: every webhook `clientConfig.service` becomes `url: https://127.0.0.1:<port><path>`
with our CA bundle, and the CRD conversion webhooks call `/convert` the same way.
"""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from .paths import module_dir

# Kueue integrations we enable. Only their webhooks (and Kueue's own API group's) are
# registered: a webhook for a disabled integration would reject every object it matches.
FRAMEWORKS = ["batch/job"]
FRAMEWORK_GROUPS = {"kueue.x-k8s.io", "batch"}
EXTERNAL_FRAMEWORKS = ["RLPostTrainJob.v1alpha1.rlpost.dev"]
CONVERTED_CRDS = {"localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters"}


def _kueue_config_dir() -> Path:
    return module_dir("sigs.k8s.io/kueue", "KUEUE_VERSION") / "config" / "components"


def _client_config(port: int, path: str, ca: Path) -> dict:
    return {
        "url": f"https://127.0.0.1:{port}{path}",
        "caBundle": base64.b64encode(ca.read_bytes()).decode(),
    }


def crds(webhook_port: int, ca: Path) -> list[dict]:
    out = []
    for f in sorted((_kueue_config_dir() / "crd" / "bases").glob("*.yaml")):
        crd = yaml.safe_load(f.read_text())
        if crd["spec"]["names"]["plural"] in CONVERTED_CRDS:
            crd["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": _client_config(webhook_port, "/convert", ca),
                    "conversionReviewVersions": ["v1"],
                },
            }
        out.append(crd)
    return out


def _framework_rule(framework: str) -> tuple[str, str]:
    """("ray.io", "rayjobs") for the integration "ray.io/rayjob": what its webhooks match."""
    group, kind = framework.rsplit("/", 1)
    return group, kind + "s"


def webhook_configurations(
    webhook_port: int, ca: Path, frameworks: tuple[str, ...] | list[str] = ()
) -> list[dict]:
    """Kueue's webhooks, and those of the extra integrations `frameworks` (only the
    webhooks for their own kind: not e.g. RayCluster's with ray.io/rayjob alone)."""
    extra = {_framework_rule(f) for f in frameworks}
    docs = yaml.safe_load_all((_kueue_config_dir() / "webhook" / "manifests.yaml").read_text())
    out = []
    for doc in docs:
        if not doc or doc.get("kind") not in (
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ):
            continue
        doc["metadata"]["name"] = "kueue-" + doc["metadata"]["name"]
        kept = []
        for hook in doc["webhooks"]:
            groups = {g for rule in hook.get("rules", []) for g in rule.get("apiGroups", [])}
            matched = {
                (g, r)
                for rule in hook.get("rules", [])
                for g in rule.get("apiGroups", [])
                for r in rule.get("resources", [])
            }
            if not groups & FRAMEWORK_GROUPS and not matched & extra:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = _client_config(webhook_port, path, ca)
            hook["namespaceSelector"] = {
                "matchExpressions": [
                    {
                        "key": "kubernetes.io/metadata.name",
                        "operator": "NotIn",
                        "values": ["kube-system", "kueue-system"],
                    }
                ]
            }
            kept.append(hook)
        doc["webhooks"] = kept
        out.append(doc)
    return out


def manager_config(
    webhook_port: int,
    health_port: int,
    cert_dir: Path,
    frameworks: tuple[str, ...] | list[str] = (),
) -> dict:
    """Kueue's Configuration; `frameworks`: integrations enabled besides FRAMEWORKS."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": "kueue-system",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "clientConnection": {"qps": 300, "burst": 500},
        "integrations": {
            "frameworks": [*FRAMEWORKS, *frameworks],
            "externalFrameworks": EXTERNAL_FRAMEWORKS,
        },
        "featureGates": {"VisibilityOnDemand": False},
    }
