"""The rollout image cannot be built here: check what it runs and that its pins resolve."""

from __future__ import annotations

import importlib.util
import json
import re
import zipfile
from pathlib import Path

from tests.image_checks import missing_copy_sources, norm, pins, resolve, runs_as_non_root
from tests.rollout.sglang_wheel import sglang_wheel

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "rollout_image" / "Dockerfile"
REQUIREMENTS = ROOT / "rollout_image" / "requirements.txt"
ROLE_MODULES = [
    "rlpost_rollout.launch_sglang",
    "rlpost_rollout.router",
    "rlpost_rollout.buffer",
    "rlpost_rollout.engine",
]


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
    assert missing_copy_sources(DOCKERFILE) == []


def test_runs_as_non_root():
    assert runs_as_non_root(DOCKERFILE)


def test_pins_cover_sglang_router_and_agree_with_sglangs_own_pins():
    p = pins(REQUIREMENTS)
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
    assert resolve(REQUIREMENTS, binary_only=True) == pins(REQUIREMENTS)
