"""Checks shared by the three images' tests (images are not built on this machine):
pinned requirements that resolve on PyPI, non-root USER, COPY sources that exist."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIP_CACHE = Path.home() / ".cache" / "rlpost" / "pip"  # outside the repository


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(requirements: Path) -> dict[str, str]:
    """name -> version of every line; each one must be an exact `name[extras]==version` pin
    (extras are dropped from the name)."""
    out = {}
    for line in requirements.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[\w,\-]+\])?==([0-9][\w.\-]*)", line)
            assert m, f"not pinned: {line}"
            out[norm(m.group(1))] = m.group(3)
    return out


def resolve(requirements: Path, binary_only: bool = False) -> dict[str, str]:
    """What pip would install for these pins (no dependencies), name -> version."""
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    report = PIP_CACHE / f"{requirements.parent.name}-report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
           "--no-deps", "--quiet", "--cache-dir", str(PIP_CACHE), "--report", str(report),
           "-r", str(requirements)]  # fmt: skip
    if binary_only:
        cmd += ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        norm(i["metadata"]["name"]): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }


def runs_as_non_root(dockerfile: Path) -> bool:
    users = re.findall(r"^USER\s+(\S+)", dockerfile.read_text(), re.M)
    return bool(users) and users[-1] not in ("root", "0")


def missing_copy_sources(dockerfile: Path) -> list[str]:
    """COPY sources (several per line allowed) that do not exist in the repository."""
    lines = re.findall(r"^COPY\s+(.+)\s+\S+$", dockerfile.read_text(), re.M)
    return [src for line in lines for src in line.split() if not (ROOT / src).exists()]
