"""Helpers for the Helm chart, the Kueue tenant manifests and the dashboard, shared by the
chart unit tests (tests/chart, helm only) and the platform e2e suite (e2e/platform)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from e2e.cluster.paths import REPO, bin_dir

CHART = REPO / "charts" / "rlpost"
KUEUE = REPO / "kueue"
DASHBOARD = REPO / "dashboards" / "rlpost.json"
CONTRACTS = REPO / "docs" / "CONTRACTS.md"
CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "Namespace",
    "ResourceFlavor",
    "ClusterQueue",
    "Cohort",
    "WorkloadPriorityClass",
}


def helm_bin() -> Path:
    path = bin_dir() / "helm"
    if not path.is_file():
        raise RuntimeError(
            f"helm not found at {path}: run `make cluster-bins` (bash e2e/cluster/build.sh)"
        )
    return path


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(helm_bin()), *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def set_args(values: dict | None) -> list[str]:
    """`--set-json` for each top-level key (exact types, lists included)."""
    out: list[str] = []
    for key, value in (values or {}).items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def render(
    release: str = "rlpost",
    namespace: str = "team-a",
    values: dict | None = None,
    include_crds: bool = False,
) -> list[dict]:
    args = ["template", release, str(CHART), "--namespace", namespace, *set_args(values)]
    if include_crds:
        args.append("--include-crds")
    out = helm(*args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def render_error(values: dict, namespace: str = "team-a") -> str:
    """stderr of a `helm template` that must fail (schema or template check)."""
    proc = helm(
        "template", "rlpost", str(CHART), "--namespace", namespace, *set_args(values), check=False
    )
    if proc.returncode == 0:
        raise AssertionError(f"helm template accepted values it must reject: {values}")
    return proc.stderr


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


# ---------------------------------------------------------------------------- Kueue


def kueue_docs(suffix: str = "") -> list[dict]:
    """kueue/ as applied by `kubectl apply -k kueue/` (the kustomization's resources).

    With `suffix`, every cluster-scoped name and every tenant namespace gets it, so a test
    can apply the exact manifests next to other tests' objects on a shared cluster.
    """
    kust = yaml.safe_load((KUEUE / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for rel in kust["resources"]:
        docs.extend(d for d in yaml.safe_load_all((KUEUE / rel).read_text()) if d)
    if not suffix:
        return docs
    return [_rename(d, lambda n: f"{n}-{suffix}") for d in docs]


def _rename(doc: dict, new) -> dict:
    """Rename every object name and every reference to one (never resource names)."""
    doc = json.loads(json.dumps(doc))
    meta, spec = doc["metadata"], doc.get("spec") or {}
    meta["name"] = new(meta["name"])
    if "namespace" in meta:
        meta["namespace"] = new(meta["namespace"])
    labels = meta.get("labels", {})
    if "rlpost.dev/tenant" in labels:
        labels["rlpost.dev/tenant"] = new(labels["rlpost.dev/tenant"])
    if doc["kind"] == "ClusterQueue":
        spec["cohortName"] = new(spec["cohortName"])
        sel = spec["namespaceSelector"]["matchLabels"]
        sel["rlpost.dev/tenant"] = new(sel["rlpost.dev/tenant"])
        for group in spec["resourceGroups"]:
            for flavor in group["flavors"]:
                flavor["name"] = new(flavor["name"])
    if doc["kind"] == "LocalQueue":
        spec["clusterQueue"] = new(spec["clusterQueue"])
    return doc


# ---------------------------------------------------------------------------- dashboard

METRIC_RE = re.compile(r"\b(rlpost_[a-z_]+?)(?:_bucket|_sum|_count)?\b(?=\s*[{\[)])")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs(dash: dict | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, rows' nested panels included."""
    dash = dash or dashboard()
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", ""), t["expr"]))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    return out


def dashboard_variable_queries(dash: dict | None = None) -> list[tuple[str, str, str]]:
    """(variable, metric selector, label) of each `label_values(selector, label)` variable."""
    dash = dash or dashboard()
    out = []
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q.strip())
        assert m, f"variable {v['name']}: unsupported query {q!r}"
        out.append((v["name"], m.group(1), m.group(2)))
    return out


def substitute_variables(expr: str, rate_interval: str = "5m") -> str:
    """What Grafana sends with every variable at `All` (allValue `.*`)."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    return re.sub(r"\$\{?(namespace|job)\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    return set(METRIC_RE.findall(expr))


def _metrics_section() -> str:
    text = CONTRACTS.read_text()
    return text.split("## Metrics", 1)[1].split("\n## ", 1)[0]


def contract_metrics() -> set[str]:
    """The core `rlpost_*` metrics of docs/CONTRACTS.md (the Operator and Roles lists):
    the dashboard must show each of them."""
    core = _metrics_section().split("carries the label `job`", 1)[0]
    return set(re.findall(r"`(rlpost_[a-z_]+)", core))


def named_metrics() -> set[str]:
    """Every `rlpost_*` metric docs/CONTRACTS.md names (core + per-role additions)."""
    return set(re.findall(r"`(rlpost_[a-z_]+)", _metrics_section()))
