"""`rlpost run`'s LocalRun on the example job, with overrides, always stopped at teardown."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from rlpost.local.runner import LocalRun
from rlpost.local.spec import load_job_file, resolve_local_paths

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "copy-first-letter.yaml"


def example_raw() -> dict:
    """The example job file as a dict, its data and eval prompt paths made absolute (for a
    copy written elsewhere)."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    spec = raw["spec"]
    spec["data"]["prompts"] = str(EXAMPLE.parent / spec["data"]["prompts"])
    if "eval" in spec:
        spec["eval"]["prompts"] = str(EXAMPLE.parent / spec["eval"]["prompts"])
    return raw


def example_job(**spec_updates):
    """The example job; keyword args are dotted spec paths, e.g. rollout__max_staleness=2."""
    job = resolve_local_paths(load_job_file(EXAMPLE), EXAMPLE.parent)
    spec = job.spec
    for key, value in spec_updates.items():
        obj = spec
        *parents, leaf = key.split("__")
        for p in parents:
            obj = getattr(obj, p)
        setattr(obj, leaf, value)
    return job


@pytest.fixture
def local_run(tmp_path):
    runs: list[LocalRun] = []

    def make(job, run_dir: Path | None = None) -> LocalRun:
        run = LocalRun(job, run_dir or tmp_path / f"run{len(runs)}", quiet=True)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.stop()


def buffer_get(run: LocalRun, path: str, **params) -> dict:
    r = httpx.get(
        run.urls["buffer"] + path,
        params=params,
        headers={"Authorization": f"Bearer {run.token}"},
        timeout=30,
    )
    r.raise_for_status()
    return r.json()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def first_step_reaching(steps: list[dict], level: float, window: int = 5) -> dict | None:
    """The first step whose trailing `window`-step mean reward is >= level."""
    for i in range(window - 1, len(steps)):
        rewards = [r["reward_mean"] for r in steps[i - window + 1 : i + 1]]
        if sum(rewards) / window >= level:
            return steps[i]
    return None


def learning_summary(steps: list[dict], level: float = 0.9) -> str:
    """One line on a run's curve: where the 5-step mean first reached `level`, if it did."""
    reached = first_step_reaching(steps, level)
    when = f"step {reached['step']} after {reached['elapsed_s']:.0f}s" if reached else "never"
    last = sum(r["reward_mean"] for r in steps[-10:]) / max(1, len(steps[-10:]))
    return (
        f"step-0 reward {steps[0]['reward_mean']:.3f}; 5-step mean >= {level} at {when}; "
        f"last-10 mean {last:.3f}; final {steps[-1]['reward_mean']:.3f}"
    )
