"""The trainer image cannot be built here: check what it runs and that its pins resolve."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from tests.image_checks import missing_copy_sources, pins, resolve, runs_as_non_root

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "trainer_image" / "Dockerfile"
REQUIREMENTS = ROOT / "trainer_image" / "requirements.txt"


def test_entrypoint_is_the_trainer_module_and_it_exists():
    text = DOCKERFILE.read_text()
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    assert entry, "Dockerfile has no exec-form ENTRYPOINT"
    assert json.loads(entry.group(1)) == ["python", "-m", "rlpost_trainer"]
    assert importlib.util.find_spec("rlpost_trainer.__main__") is not None
    # The PYTHONPATH the image sets makes exactly the copied folders importable.
    assert "/opt/rlpost/trainer_image" in text
    assert missing_copy_sources(DOCKERFILE) == []


def test_runs_as_non_root():
    assert runs_as_non_root(DOCKERFILE)


def test_requirements_are_pinned_and_cover_what_the_trainer_imports():
    names = set(pins(REQUIREMENTS))
    assert {"torch", "transformers", "httpx", "pydantic", "pyyaml", "prometheus-client"} <= names


def test_pinned_requirements_resolve():
    assert resolve(REQUIREMENTS) == pins(REQUIREMENTS)
