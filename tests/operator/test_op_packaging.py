"""The operator image: its entrypoint names a module that exists, its pins resolve."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from tests.image_checks import missing_copy_sources, pins, resolve, runs_as_non_root

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "operator" / "Dockerfile"
REQUIREMENTS = REPO / "operator" / "requirements.txt"


def test_entrypoint_module_exists_and_parses_flags():
    text = DOCKERFILE.read_text()
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    assert entry, "Dockerfile has no exec-form ENTRYPOINT"
    argv = json.loads(entry.group(1))
    assert argv[:2] == ["python", "-m"]
    module = argv[2]
    assert importlib.util.find_spec(module) is not None, module
    assert runs_as_non_root(DOCKERFILE)
    # the flags the chart passes are accepted
    from rlpost_operator.__main__ import parse_args

    a = parse_args(["--namespace", "a", "--namespace", "b", "--metrics-port", "9090"])
    assert a.namespaces == ["a", "b"] and a.metrics_port == 9090 and not a.all_namespaces
    assert parse_args(["--all-namespaces"]).all_namespaces
    with pytest.raises(SystemExit):
        parse_args(["--all-namespaces", "--namespace", "a"])
    assert missing_copy_sources(DOCKERFILE) == []


def test_requirements_are_pinned_and_resolve():
    pinned = pins(REQUIREMENTS)
    assert {"kopf", "kubernetes", "pydantic", "prometheus-client"} <= set(pinned)
    assert resolve(REQUIREMENTS) == pinned
