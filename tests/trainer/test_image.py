"""The trainer image cannot be built here: check what it runs and that its pins resolve."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "trainer_image" / "Dockerfile"
REQUIREMENTS = ROOT / "trainer_image" / "requirements.txt"
PIP_CACHE = Path.home() / ".cache" / "rlpost" / "pip"  # outside the repository


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines() -> list[str]:
    return [
        line.strip()
        for line in REQUIREMENTS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_entrypoint_is_the_trainer_module_and_it_exists():
    text = DOCKERFILE.read_text()
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    assert entry, "Dockerfile has no exec-form ENTRYPOINT"
    assert json.loads(entry.group(1)) == ["python", "-m", "rlpost_trainer"]
    assert importlib.util.find_spec("rlpost_trainer.__main__") is not None
    # The PYTHONPATH the image sets makes exactly the copied folders importable.
    assert "/opt/rlpost/trainer_image" in text
    for src in re.findall(r"^COPY\s+(\S+)\s+\S+$", text, re.M):
        assert (ROOT / src).exists(), f"COPY source {src} missing"


def test_runs_as_non_root():
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(), re.M)
    assert users and users[-1] not in ("root", "0")


def test_requirements_are_pinned_and_cover_what_the_trainer_imports():
    lines = requirement_lines()
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", x) for x in lines), lines
    names = {x.split("==")[0].lower() for x in lines}
    assert {"torch", "transformers", "httpx", "pydantic", "pyyaml", "prometheus-client"} <= names


def test_pinned_requirements_resolve():
    report = PIP_CACHE / "trainer-report.json"
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--no-deps",
            "--quiet",
            "--cache-dir",
            str(PIP_CACHE),
            "--report",
            str(report),
            "-r",
            str(REQUIREMENTS),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = {
        norm(i["metadata"]["name"]): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    for line in requirement_lines():
        name, version = line.split("==")
        assert resolved.get(norm(name)) == version, (name, resolved)
