"""Validation before admission: everything about a job that can be known before Kueue gives
it quota, so that a job that can never run is InvalidSpec instead of holding GPUs.

Pure functions over the spec and facts the controller reads (the job's LocalQueue ->
ClusterQueue -> ResourceFlavors -> Nodes); no I/O here.

- `name_errors`: the job name's derived child names fit their limits (also a CEL rule on
  metadata.name in the CRD; repeated here for a CRD installed before the rule existed).
- `config_size_errors`: the rendered `<job>-config` ConfigMap stays under the API server's
  1 MiB limit for a ConfigMap's data.
- `capacity_errors`: no pod asks for more GPUs than the largest node that any GPU flavor of
  the job's ClusterQueue can place it on ("can never be scheduled").
- `custom_function_errors`: a custom function (`reward.function`, `data.source`,
  `rollout.generate`, `algorithm.filter`: `rlpost.extension_points`) inside the packages the
  rollout image ships (`rlpost_rollout`, `rlpost`) exists as a top-level function taking the
  extension point's arguments (async where it must be). Read from source, never imported: the
  operator runs no code named by a spec. Other modules (a custom image's code) are checked by
  the buffer at start, which reports a failure through its termination message
  (`INVALID_SPEC_EXIT_CODE`).
"""

from __future__ import annotations

import ast
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlpost import api
from rlpost.extension_points import ExtensionPoint, spec_functions

from . import builders as b
from .constants import GPU

# The API server refuses a ConfigMap whose data (keys + values) exceeds 1 MiB.
CONFIG_MAP_LIMIT = 1024 * 1024
# What the operator adds to the data after this check (resume-step) fits in this.
CONFIG_HEADROOM = 64
# Exit code (EX_CONFIG) of a role that found the spec unusable at start (a custom function
# that cannot be imported): the operator fails the job without restarts.
INVALID_SPEC_EXIT_CODE = 78
# Packages of the rollout image the operator may read a custom function's source from.
SHIPPED_PACKAGES = ("rlpost_rollout", "rlpost")


# ---------------------------------------------------------------------------- names, size


def name_errors(name: str) -> list[str]:
    return api.name_errors(name)


def config_map_data_size(cm: dict[str, Any]) -> int:
    """How the API server counts a ConfigMap's size: keys plus values, in bytes."""
    total = 0
    for section in ("data", "binaryData"):
        for key, value in (cm.get(section) or {}).items():
            total += len(key.encode()) + len(str(value).encode())
    return total


def config_size_errors(ref: b.JobRef, spec_wire: dict[str, Any]) -> list[str]:
    size = config_map_data_size(b.build_config_map(ref, spec_wire, None)) + CONFIG_HEADROOM
    if size <= CONFIG_MAP_LIMIT:
        return []
    biggest = sorted(((len(json.dumps(v)), k) for k, v in _leaves(spec_wire)), reverse=True)[:3]
    where = ", ".join(f"spec.{k} ({n} bytes)" for n, k in biggest)
    return [
        f"the rendered config ConfigMap {b.names(ref.name)['config']} would be {size} bytes, "
        f"over the API server's limit of {CONFIG_MAP_LIMIT} bytes (1 MiB); largest fields: "
        f"{where}: move large data to a file (data.prompts, model.path) and shrink the spec"
    ]


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict) and node and len(json.dumps(node)) > 4096:
        out: list[tuple[str, Any]] = []
        for k, v in node.items():
            out += _leaves(v, f"{prefix}.{k}" if prefix else k)
        return out
    return [(prefix or "spec", node)]


# ---------------------------------------------------------------------------- GPU capacity


@dataclass
class QueueCapacity:
    """The GPU nodes a job's queue can use: per GPU flavor of its ClusterQueue, the nodes
    matching the flavor's nodeLabels whose taints the flavor tolerates."""

    local_queue: str
    cluster_queue: str | None = None
    # flavor -> {node name: allocatable GPUs}
    nodes: dict[str, dict[str, int]] = field(default_factory=dict)

    def largest(self) -> int | None:
        sizes = [n for per in self.nodes.values() for n in per.values()]
        return max(sizes) if sizes else None


def _tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator") == "Exists":
            if not t.get("key") or t["key"] == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and t.get("value", "") == taint.get("value", ""):
            return True
    return False


def _quantity(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def queue_capacity(
    local_queue: str,
    cluster_queue: dict[str, Any] | None,
    flavors: dict[str, dict[str, Any]],
    nodes: list[dict[str, Any]],
) -> QueueCapacity:
    cap = QueueCapacity(local_queue, (cluster_queue or {}).get("metadata", {}).get("name"))
    for group in ((cluster_queue or {}).get("spec") or {}).get("resourceGroups") or []:
        if GPU not in (group.get("coveredResources") or []):
            continue
        for fq in group.get("flavors") or []:
            fspec = (flavors.get(fq.get("name")) or {}).get("spec") or {}
            want = fspec.get("nodeLabels") or {}
            tols = fspec.get("tolerations") or []
            per: dict[str, int] = {}
            for node in nodes:
                labels = node["metadata"].get("labels") or {}
                if any(labels.get(k) != v for k, v in want.items()):
                    continue
                taints = [
                    t
                    for t in (node.get("spec") or {}).get("taints") or []
                    if t.get("effect") in ("NoSchedule", "NoExecute")
                ]
                if any(not _tolerates(tols, t) for t in taints):
                    continue
                gpus = _quantity(((node.get("status") or {}).get("allocatable") or {}).get(GPU, 0))
                per[node["metadata"]["name"]] = gpus
            cap.nodes[fq.get("name", "?")] = per
    return cap


def capacity_errors(spec: api.RLPostTrainJobSpec, cap: QueueCapacity | None) -> list[str]:
    """A pod that asks for more GPUs than any node its flavors allow can never be scheduled.
    Nothing is said when no node matches at all (a cluster autoscaler may add them)."""
    if cap is None:
        return []
    largest = cap.largest()
    if largest is None:
        return []
    errors = []
    field_of = {
        "trainer": "trainer.gpusPerPod",
        "worker": "trainer.gpusPerPod",
        "rollout": "rollout.gpusPerEngine",
    }
    for g in b.pod_groups(spec):
        if g.gpus <= largest:
            continue
        where = "; ".join(
            f"flavor {f}: " + (", ".join(f"{n} {c}" for n, c in sorted(per.items())) or "no node")
            for f, per in sorted(cap.nodes.items())
        )
        errors.append(
            f"can never be scheduled: {g.name} pods request {g.gpus} {GPU} each, but the "
            f"largest node that LocalQueue {cap.local_queue} (ClusterQueue "
            f"{cap.cluster_queue}) can use has {largest} ({where}): set "
            f"{field_of.get(g.name, g.name)} to at most {largest}"
        )
    return errors


# ---------------------------------------------------------------------------- custom functions


def _module_file(module: str) -> Path | None:
    parts = module.split(".")
    found = importlib.util.find_spec(parts[0])  # a top-level name: nothing is imported
    if found is None:  # e.g. rlpost_rollout in the operator's image: the buffer checks it
        raise ImportError(f"{parts[0]} is not installed here")
    if not found.submodule_search_locations:
        return Path(found.origin) if found.origin and len(parts) == 1 else None
    base = Path(list(found.submodule_search_locations)[0])
    for part in parts[1:-1]:
        base = base / part
    last = parts[-1] if len(parts) > 1 else None
    if last is None:
        return base / "__init__.py"
    for candidate in (base / f"{last}.py", base / last / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _signature_problem(
    fn: ast.FunctionDef | ast.AsyncFunctionDef, point: ExtensionPoint
) -> str | None:
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    required = len(positional) - len(a.defaults)
    if len(positional) < len(point.args) and a.vararg is None:
        return f"takes {len(positional)} positional arguments"
    if required > len(point.args):
        return f"requires {required} positional arguments"
    missing_kw = [k.arg for k, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is None]
    if missing_kw:
        return f"requires keyword arguments {missing_kw}"
    if point.is_async and not isinstance(fn, ast.AsyncFunctionDef):
        return "is not async"
    return None


def custom_function_errors(spec: api.RLPostTrainJobSpec) -> list[str]:
    return [e for point, path in spec_functions(spec) for e in _function_errors(point, path)]


def _function_errors(point: ExtensionPoint, path: str) -> list[str]:
    field = point.field
    module, _, attr = path.partition(":")
    if module.split(".")[0] not in SHIPPED_PACKAGES:
        return []  # a custom image's code: checked by the buffer at start
    try:
        source = _module_file(module)
    except (ImportError, ValueError):
        return []  # the package is not installed here: the buffer checks it
    if source is None:
        return [
            f"{field} {path!r}: module {module!r} does not exist in the rollout image "
            f"(packages {', '.join(SHIPPED_PACKAGES)})"
        ]
    try:
        tree = ast.parse(source.read_text())
    except (OSError, SyntaxError) as exc:
        return [f"{field} {path!r}: cannot read {module}: {exc}"]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == attr:
            problem = _signature_problem(node, point)
            if problem:
                kind = "an async function" if point.is_async else "a function"
                return [
                    f"{field} {path!r} {problem}; {field} must be {kind} called as "
                    f"{point.call(attr)} that returns {point.returns}"
                ]
            return []
        if isinstance(node, ast.ClassDef) and node.name == attr:
            return []  # a callable class: its __call__ is not checked statically
        targets: list[str] = []
        if isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, (ast.AnnAssign,)) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            targets = [(n.asname or n.name).split(".")[0] for n in node.names]
        if attr in targets:
            return []  # bound some other way: exists; its signature is checked at start
    return [f"{field} {path!r}: module {module} has no function {attr!r}"]


# ---------------------------------------------------------------------------- all of it


def cluster_support_errors(spec: api.RLPostTrainJobSpec) -> list[str]:
    """What `rlpost run` does and the operator does not do yet: refused before admission, so
    nothing is created for a job whose pods could not start or could never generate.

    mode colocated runs as ONE worker pod: the trainer container and one engine container
    (builders/pods.py). Only global rank 0 syncs weights, over shared memory, which reaches
    its own pod's engine only; and a container cannot be handed the trainer container's GPUs
    through the device plugin. So: one pod, one engine, on the CPU (docs/DESIGN.md)."""
    if spec.mode != api.Mode.COLOCATED:
        return []
    errors = []
    if spec.trainer.replicas != 1:
        errors.append(
            f"mode: colocated in a cluster runs one worker pod (the trainer and its engine): "
            f"set trainer.replicas to 1 (it is {spec.trainer.replicas}); several worker pods, "
            "each rank syncing its own pod's engine, are not built yet (use mode: "
            "disaggregated for more trainer pods)"
        )
    if spec.rollout.engines != 1:
        errors.append(
            f"mode: colocated in a cluster runs one engine, in the worker pod: set "
            f"rollout.engines to 1 (it is {spec.rollout.engines}; use mode: disaggregated "
            "for more engines)"
        )
    if spec.trainer.gpus_per_pod or spec.rollout.gpus_per_engine:
        errors.append(
            "mode: colocated in a cluster runs on the CPU only for now: set trainer.gpusPerPod "
            "and rollout.gpusPerEngine to 0 (the worker pod's engine container cannot be given "
            "the trainer container's GPUs through the device plugin; use mode: disaggregated "
            "on GPUs)"
        )
    return errors


def pre_admission_errors(
    ref: b.JobRef,
    spec: api.RLPostTrainJobSpec,
    spec_wire: dict[str, Any],
    cap: QueueCapacity | None,
) -> list[str]:
    """Everything checked before admission (the name is checked by `name_errors`)."""
    return [
        *config_size_errors(ref, spec_wire),
        *capacity_errors(spec, cap),
        *custom_function_errors(spec),
        *cluster_support_errors(spec),
    ]
