"""The rollout image cannot be built here: check what it runs and that its pins resolve."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.rollout.sglang_wheel import sglang_wheel

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "rollout_image" / "Dockerfile"
REQUIREMENTS = ROOT / "rollout_image" / "requirements.txt"
PIP_CACHE = Path.home() / ".cache" / "rlpost" / "pip"  # outside the repository
ROLE_MODULES = [
    "rlpost_rollout.launch_sglang",
    "rlpost_rollout.router",
    "rlpost_rollout.buffer",
    "rlpost_rollout.engine",
]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    out = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", line), f"not pinned: {line}"
            name, version = line.split("==")
            out[norm(name)] = version
    return out


def exec_form(keyword: str) -> list[str]:
    m = re.search(rf"^{keyword}\s+(\[.*\])\s*$", DOCKERFILE.read_text(), re.M)
    assert m, f"Dockerfile has no exec-form {keyword}"
    return json.loads(m.group(1))


def test_entrypoint_and_every_role_module_exist():
    command = exec_form("ENTRYPOINT") + exec_form("CMD")
    assert command[:3] == ["python", "-m", "rlpost_rollout.launch_sglang"], command
    text = DOCKERFILE.read_text()
    for module in ROLE_MODULES:
        spec = importlib.util.find_spec(module)
        assert spec is not None, module
        runnable = module if spec.submodule_search_locations is None else f"{module}.__main__"
        assert importlib.util.find_spec(runnable) is not None, runnable
        assert module in text, f"{module} not documented in the Dockerfile"
    assert "/opt/rlpost/rollout_image" in text
    for src in re.findall(r"^COPY\s+(\S+)\s+\S+$", text, re.M):
        assert (ROOT / src).exists(), f"COPY source {src} missing"


def test_runs_as_non_root():
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(), re.M)
    assert users and users[-1] not in ("root", "0")


def test_pins_cover_sglang_router_and_agree_with_sglangs_own_pins():
    p = pins()
    assert p["sglang-router"] == "0.3.2"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"sglang-router=={p["sglang-router"]}"' in pyproject  # one router version everywhere
    with zipfile.ZipFile(sglang_wheel()) as z:
        meta = z.read(f"sglang-{p['sglang']}.dist-info/METADATA").decode()
    exact = dict(
        (norm(m.group(1)), m.group(2))
        for m in re.finditer(r"^Requires-Dist: ([A-Za-z0-9_.\-]+)==([\w.]+)\s*$", meta, re.M)
    )
    clashes = {n: (v, exact[n]) for n, v in p.items() if n in exact and exact[n] != v}
    assert not clashes, f"our pin vs sglang's: {clashes}"
    assert {"torch", "transformers"} <= set(exact) & set(p)


def test_pinned_requirements_resolve():
    report = PIP_CACHE / "rollout-report.json"
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
            "--only-binary",
            ":all:",
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
    assert resolved == pins(), resolved
