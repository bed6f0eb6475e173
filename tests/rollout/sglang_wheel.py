"""The pinned SGLang wheel, downloaded once into a cache outside the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WHEELS = Path.home() / ".cache" / "rlpost" / "wheels"


def pinned_version() -> str:
    text = (ROOT / "rollout_image" / "requirements.txt").read_text()
    m = re.search(r"^sglang==([\w.]+)\s*$", text, re.M)
    assert m, "rollout_image/requirements.txt must pin sglang==<version>"
    return m.group(1)


def sglang_wheel() -> Path:
    version = pinned_version()
    found = sorted(WHEELS.glob(f"sglang-{version}-*.whl"))
    if found:
        return found[0]
    WHEELS.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            str(WHEELS),
            f"sglang=={version}",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
    )
    found = sorted(WHEELS.glob(f"sglang-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        pytest.fail(
            f"could not download sglang=={version} from PyPI into {WHEELS} (is PyPI reachable? "
            f"pip said: {proc.stderr.strip()[-800:]})"
        )
    return found[0]
