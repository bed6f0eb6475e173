"""Generate the RLPostTrainJob CRD from the pydantic models in `rlpost.api`.

    python -m rlpost.crdgen --out crds/      # (re)write crds/rlposttrainjobs.rlpost.dev.yaml
    python -m rlpost.crdgen --check          # exit 1 when crds/ differs from the models

The API server needs a *structural* OpenAPI v3 schema: every node has a type, no `$ref`,
no `anyOf` with null, `exclusiveMinimum` is a boolean next to `minimum`, and free-form maps
say `x-kubernetes-preserve-unknown-fields`. This module turns pydantic's JSON Schema into
that shape; CEL rules written next to the models (`x-kubernetes-validations`) are kept.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import sys
from pathlib import Path
from typing import Any

import yaml

from rlpost import api

CRD_NAME = f"{api.PLURAL}.{api.GROUP}"
FILE_NAME = f"{CRD_NAME}.yaml"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "crds"

# JSON Schema keys the API server's structural schema accepts (others are dropped).
_KEEP = {
    "type",
    "format",
    "description",
    "properties",
    "items",
    "required",
    "enum",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "additionalProperties",
    "nullable",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every `$ref` (the API server has no `$defs`)."""
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        rest = {k: v for k, v in node.items() if k != "$ref"}
        target.update(rest)  # a field's own default/description win over the model's
        return _resolve(target, defs)
    return {k: _resolve(v, defs) for k, v in node.items()}


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """One schema node in the API server's dialect."""
    node = dict(node)
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        options = [o for o in any_of if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf {any_of} structurally")
        merged = dict(options[0])
        merged.update(node)
        node = merged
        if node.get("default", "unset") is None:
            node.pop("default")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        value = node.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            node["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            node[key] = True
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node.pop("additionalProperties", None)
    elif isinstance(node.get("additionalProperties"), bool):
        node.pop("additionalProperties")  # unknown fields are pruned (and rejected by kubectl)
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "properties":
            value = {name: _structural(sub) for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            value = _structural(value)
        elif key == "description":
            value = " ".join(value.split())
        out[key] = value
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        raise ValueError(f"schema node without a type: {node}")
    return out


def model_schema(model: type[api.Model]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs))


def _with_wire_defaults(schema: dict[str, Any], model: type[api.Model]) -> dict[str, Any]:
    """Object fields whose default is a model instance get that instance's wire form (the
    API server fills nested defaults only when the parent object is present)."""
    for name, field in model.model_fields.items():
        alias = field.alias or name
        prop = schema.get("properties", {}).get(alias)
        if prop is None:
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, api.Model):
            prop["default"] = default.wire()
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, api.Model):
            _with_wire_defaults(prop, sub)
    return schema


def spec_schema() -> dict[str, Any]:
    return _with_wire_defaults(model_schema(api.RLPostTrainJobSpec), api.RLPostTrainJobSpec)


def status_schema() -> dict[str, Any]:
    schema = model_schema(api.RLPostTrainJobStatus)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions["items"]["required"] = sorted(
        set(conditions["items"].get("required", [])) | {"type", "status"}
    )
    return schema


def root_validations() -> list[dict[str, str]]:
    extra = api.RLPostTrainJob.model_config.get("json_schema_extra") or {}
    return list(extra.get("x-kubernetes-validations") or [])  # type: ignore[union-attr]


def build_crd() -> dict[str, Any]:
    columns = [
        {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Step", "type": "integer", "jsonPath": ".status.step"},
        {"name": "Reward", "type": "number", "jsonPath": ".status.rewardMean"},
        {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
        {"name": "Queue", "type": "string", "jsonPath": ".spec.queueName"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "rlpost"},
            "annotations": {"rlpost.dev/generated-by": "python -m rlpost.crdgen"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.KIND.lower(),
                "shortNames": [api.SHORT_NAME],
                "categories": ["all", "rlpost"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "An RL post-training job: a Kueue-admitted gang "
                            "of trainer, rollout engines, router and buffer.",
                            "required": ["spec"],
                            # Rules on the whole object (metadata.name: the children's names
                            # derive from it), from the RLPostTrainJob model.
                            "x-kubernetes-validations": root_validations(),
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `python -m rlpost.crdgen` from rlpost/api/. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlpost.crdgen", description=__doc__)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory of the CRD YAML")
    p.add_argument("--check", action="store_true", help="fail when the file is not current")
    args = p.parse_args(argv)
    target = args.out / FILE_NAME
    text = render()
    if args.check:
        current = target.read_text() if target.exists() else ""
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(), text.splitlines(), str(target), "generated", lineterm=""
            )
            print("\n".join(list(diff)[:80]), file=sys.stderr)
            print(
                f"{target} is not what rlpost/api/ generates: run `make crds`",
                file=sys.stderr,
            )
            return 1
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
