"""The operator image: its entrypoint names a module that exists, its pins resolve."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

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
    assert re.search(r"^USER\s+(\d+)", text, re.M), "the image must not run as root"
    assert "USER root" not in text
    # the flags the chart passes are accepted
    from rlpost_operator.__main__ import parse_args

    a = parse_args(["--namespace", "a", "--namespace", "b", "--metrics-port", "9090"])
    assert a.namespaces == ["a", "b"] and a.metrics_port == 9090 and not a.all_namespaces
    assert parse_args(["--all-namespaces"]).all_namespaces
    with pytest.raises(SystemExit):
        parse_args(["--all-namespaces", "--namespace", "a"])
    # every COPY source exists
    for src in re.findall(r"^COPY\s+(.+)\s+\S+$", text, re.M):
        for part in src.split():
            assert (REPO / part).exists(), part


def test_requirements_are_pinned_and_resolve():
    pins = [
        line.strip()
        for line in REQUIREMENTS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][\w.\-]*", p) for p in pins), pins
    names = {p.split("==")[0].lower() for p in pins}
    assert {"kopf", "kubernetes", "pydantic", "prometheus-client"} <= names
    cache = Path(tempfile.gettempdir()) / "rlpost-operator-pins"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--dest",
            str(cache),
            "-r",
            str(REQUIREMENTS),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
