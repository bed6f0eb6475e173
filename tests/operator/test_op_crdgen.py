"""The CRD is generated from rlpost.api and the committed file is current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from rlpost import api, crdgen

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "crds" / crdgen.FILE_NAME


def walk(node, path="$"):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.get("properties", {}).items():
            yield from walk(v, f"{path}.{k}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from walk(node["additionalProperties"], f"{path}{{}}")


def version():
    return crdgen.build_crd()["spec"]["versions"][0]


def test_schema_is_structural():
    schema = version()["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(schema)
    assert "$ref" not in text and "anyOf" not in text and "$defs" not in text
    for path, node in walk(schema):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not ("properties" in node and "additionalProperties" in node), path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path
        assert "title" not in node, path


def test_enums_minimums_defaults_and_cel():
    spec = version()["schema"]["openAPIV3Schema"]["properties"]["spec"]
    p = spec["properties"]
    assert p["mode"]["enum"] == ["disaggregated", "colocated"]
    assert p["mode"]["default"] == "disaggregated"
    assert p["trainer"]["properties"]["replicas"]["minimum"] == 1
    assert p["rollout"]["properties"]["router"]["properties"]["policy"]["enum"][0] == "cache_aware"
    assert p["algorithm"]["properties"]["lr"]["exclusiveMinimum"] is True
    # nested model defaults are the model's own wire form (trainer resources differ from
    # the Resources class defaults)
    assert p["trainer"]["default"]["resources"] == {"cpu": "8", "memory": "64Gi"}
    assert p["trainer"]["properties"]["resources"]["default"] == {"cpu": "8", "memory": "64Gi"}
    assert set(spec["required"]) == {"model", "data"}
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("maxStaleness == 0" in r for r in rules)
    trainer_rules = [r["rule"] for r in p["trainer"]["x-kubernetes-validations"]]
    assert any("parallelism.tensor" in r for r in trainer_rules)
    assert p["model"]["properties"]["config"]["x-kubernetes-preserve-unknown-fields"] is True


def test_status_subresource_printer_columns_names():
    crd = crdgen.build_crd()
    v = version()
    assert v["subresources"] == {"status": {}}
    cols = [c["name"] for c in v["additionalPrinterColumns"]]
    assert cols == ["Mode", "Phase", "Step", "Reward", "Restarts", "Queue", "Age"]
    names = crd["spec"]["names"]
    assert names["shortNames"] == [api.SHORT_NAME] and "rlpost" in names["categories"]
    status = v["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["properties"]["phase"]["enum"][0] == "Pending"
    assert status["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_committed_crd_is_current_and_check_catches_drift(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "rlpost.crdgen", "--check"], cwd=REPO, capture_output=True
    )
    assert ok.returncode == 0, ok.stderr.decode()
    assert COMMITTED.read_text() == crdgen.render()
    stale = tmp_path / crdgen.FILE_NAME
    stale.write_text(crdgen.render().replace("maxStaleness == 0", "maxStaleness == 1"))
    bad = subprocess.run(
        [sys.executable, "-m", "rlpost.crdgen", "--check", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert "make crds" in bad.stderr and "maxStaleness" in bad.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "rlpost.crdgen", "--check", "--out", str(tmp_path / "none")],
        cwd=REPO,
        capture_output=True,
    )
    assert missing.returncode == 1
