"""Loading and checking a job file before anything starts.

Errors are collected (not raised one at a time) and phrased as what to change, with the
field path as it is written in YAML (camelCase), e.g. `spec.algorithm.groupSize: ...`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from pydantic import ValidationError

from rlpost.api import EngineKind, RLPostTrainJob, semantic_errors
from rlpost.local.gpus import plan_gpus, transport_problem, visible_gpus


class SpecError(ValueError):
    def __init__(self, path: str | Path, problems: list[str]):
        self.problems = problems
        super().__init__(f"{path}: invalid job spec:\n" + "\n".join(f"  - {p}" for p in problems))


def pydantic_problems(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        where = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (typo?)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        out.append(f"{where}: {msg}")
    return out


def load_job_file(path: str | Path) -> RLPostTrainJob:
    path = Path(path)
    if not path.exists():
        raise SpecError(path, ["file does not exist"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(path, [f"not valid YAML: {e}"]) from e
    if not isinstance(raw, dict):
        raise SpecError(path, ["expected a YAML mapping (an RLPostTrainJob object)"])
    try:
        job = RLPostTrainJob.model_validate(raw)
    except ValidationError as e:
        raise SpecError(path, pydantic_problems(e)) from e
    problems = semantic_errors(job.spec)
    if problems:
        raise SpecError(path, problems)
    return job


def resolve_local_paths(job: RLPostTrainJob, base: Path) -> RLPostTrainJob:
    """Relative data/model/checkpoint paths are relative to the job file in `rlpost run`."""
    spec = job.spec.model_copy(deep=True)

    def resolve(p: str | None) -> str | None:
        if p is None or Path(p).is_absolute() or p.startswith("char:"):
            return p
        return str((base / p).resolve())

    spec.data.prompts = resolve(spec.data.prompts)
    if spec.eval is not None:
        spec.eval.prompts = resolve(spec.eval.prompts)
    spec.model.path = resolve(spec.model.path)
    if spec.model.tokenizer and not spec.model.tokenizer.startswith("char:"):
        spec.model.tokenizer = resolve(spec.model.tokenizer)
    spec.checkpoint.path = resolve(spec.checkpoint.path)
    return job.model_copy(update={"spec": spec})


def model_problems_here(spec, plan) -> list[str]:
    """spec.model on this machine: the directory, architecture, tokenizer (chat template when
    the prompts are messages), the engines' dtype on their device, and a conversion for the
    family when the trainer is Megatron (rlpost.models.model_problems)."""
    from rlpost.models import ModelError, model_config, model_problems

    engines_on_gpu = bool(plan.gpus) and spec.rollout.gpus_per_engine > 0
    chat = spec.data.messages_key is not None or spec.data.apply_chat_template
    problems = model_problems(spec.model, chat, "cuda" if engines_on_gpu else "cpu")
    if not problems and str(spec.trainer.backend) == "megatron":
        try:
            from rlpost_trainer.megatron.convert import shape_for

            shape_for(model_config(spec.model))
        except ModelError as exc:
            problems.append(str(exc))
    return problems


def local_problems(job: RLPostTrainJob) -> list[str]:
    """What this machine cannot run even though the spec is valid for a cluster."""
    spec = job.spec
    problems = []
    if spec.data.source is None and not Path(spec.data.prompts or "").exists():
        problems.append(f"spec.data.prompts: {spec.data.prompts} does not exist on this machine")
    if spec.eval is not None and not Path(spec.eval.prompts).exists():
        problems.append(f"spec.eval.prompts: {spec.eval.prompts} does not exist on this machine")
    if spec.rollout.engine == EngineKind.SGLANG and shutil.which("nvidia-smi") is None:
        problems.append(
            "spec.rollout.engine: sglang needs NVIDIA GPUs; set rollout.engine: reference to "
            "run on CPU"
        )
    plan = plan_gpus(spec, visible_gpus())
    problem = transport_problem(spec, plan)
    if problem:
        problems.append(problem)
    problems += model_problems_here(spec, plan)
    return problems
