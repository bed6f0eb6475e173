"""`rlpost`: run a job on this machine, or check a job file.

rlpost run job.yaml [--steps N] [--run-dir DIR] [--max-staleness K] [--reward-workers N]
rlpost validate job.yaml
rlpost export RUN_DIR --step N OUT   (a training checkpoint as a Hugging Face model directory)
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from rlpost.local.spec import SpecError, load_job_file, local_problems, resolve_local_paths


def _load(path: str, overrides: argparse.Namespace | None = None):
    job = resolve_local_paths(load_job_file(path), Path(path).resolve().parent)
    if overrides is not None:
        spec = job.spec
        if overrides.steps is not None:
            spec.steps = overrides.steps
        if overrides.max_staleness is not None:
            spec.rollout.max_staleness = overrides.max_staleness
        if getattr(overrides, "reward_workers", None) is not None:
            spec.reward.pool.workers = overrides.reward_workers
        # Re-validate: an override can make the spec invalid (e.g. staleness in colocated).
        from rlpost.api import RLPostTrainJob, semantic_errors

        job = RLPostTrainJob.model_validate(job.wire())
        problems = semantic_errors(job.spec)
        if problems:
            raise SpecError(path, problems)
    return job


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        job = _load(args.job)
    except SpecError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"{args.job}: valid RLPostTrainJob {job.metadata.name!r} ({job.spec.mode})")
    for p in local_problems(job):
        print(f"  note for `rlpost run` on this machine: {p}")
    return 0


def trainer_ranks_problem(spec, plan, ranks: int) -> str | None:
    """--trainer-ranks: any number of gloo ranks on the CPU, one GPU each on GPUs."""
    if ranks < 1:
        return "--trainer-ranks must be at least 1"
    gpus = plan.gpus if plan.trainer is None else [g for g in plan.trainer.split(",") if g]
    if ranks > 1 and gpus and spec.trainer.gpus_per_pod > 0 and ranks > len(gpus):
        return f"--trainer-ranks {ranks}: the trainer has {len(gpus)} GPUs here (one per rank)"
    return None


def cmd_run(args: argparse.Namespace) -> int:
    from rlpost.local.gpus import local_transport
    from rlpost.local.procs import RoleFailed
    from rlpost.local.runner import LocalRun

    try:
        job = _load(args.job, args)
    except SpecError as e:
        print(e, file=sys.stderr)
        return 2
    problems = local_problems(job)
    if problems:
        print(str(SpecError(args.job, problems)), file=sys.stderr)
        return 2
    run_dir = Path(
        args.run_dir or Path("runs") / f"{job.metadata.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    run = LocalRun(job, run_dir, trainer_ranks=args.trainer_ranks)
    problem = trainer_ranks_problem(job.spec, run.gpus, args.trainer_ranks)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    # Ctrl-C and SIGTERM both end in the `finally` below, which stops every role.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"rlpost run: {job.metadata.name}, {job.spec.steps} steps, run dir {run_dir}")
    transport = local_transport(job.spec, run.gpus)
    colocated = str(job.spec.mode) == "colocated"
    print(f"placement: {run.gpus.describe(colocated)}; weight sync: {transport}")
    try:
        run.start()
        if run.resumed_from:
            print(f"resuming from checkpoint step {run.resumed_from}")
        result = run.follow()
    except RoleFailed as e:
        print(f"rlpost run failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; stopping every role", file=sys.stderr)
        return 130
    finally:
        run.stop()
    if result.steps:
        last = result.steps[-1]
        print(
            f"done: {len(result.steps)} steps in {result.wall_s:.0f}s, final reward "
            f"{last['reward_mean']:.3f}; {run_dir / 'steps.jsonl'}, {run_dir / 'reward_curve.png'}"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A training checkpoint of `rlpost run` (RUN_DIR/job.yaml + its checkpoints) as a HF
    model directory: config, safetensors weights, generation config, tokenizer."""
    import yaml

    from rlpost.api import RLPostTrainJob

    run_dir = Path(args.run_dir)
    job_file = run_dir / "job.yaml"
    if not job_file.exists():
        print(f"{run_dir}: no job.yaml (not a `rlpost run` directory)", file=sys.stderr)
        return 2
    job = RLPostTrainJob.model_validate(yaml.safe_load(job_file.read_text()))
    spec = job.spec
    root = Path(spec.checkpoint.path or run_dir / "trainer-state" / "checkpoints")
    step_dir = root / f"step-{args.step:08d}"
    if not (step_dir / "state.pt").exists():
        have = sorted(p.name for p in root.glob("step-*")) if root.is_dir() else []
        print(f"no checkpoint for step {args.step} in {root} (have: {have})", file=sys.stderr)
        return 2
    from rlpost_trainer.hf_export import hf_weights_from_checkpoint, save_hf

    from rlpost.models import build_tokenizer

    vocab = build_tokenizer(spec.model).vocab_size
    weights = hf_weights_from_checkpoint(step_dir, spec.model, str(spec.trainer.backend), vocab)
    out = save_hf(weights, spec.model, Path(args.out), vocab)
    print(f"wrote {out} (step {args.step}, {spec.model.dtype})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlpost", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a job on this machine (every role a local process)")
    run.add_argument("job", help="RLPostTrainJob YAML")
    run.add_argument("--steps", type=int, default=None, help="override spec.steps")
    run.add_argument("--run-dir", default=None, help="default runs/<name>-<timestamp>")
    run.add_argument(
        "--max-staleness", type=int, default=None, help="override spec.rollout.maxStaleness"
    )
    run.add_argument(
        "--trainer-ranks",
        type=int,
        default=1,
        help="data-parallel trainer ranks (one pod of that many GPUs; gloo ranks on the CPU)",
    )
    run.add_argument(
        "--reward-workers",
        type=int,
        default=None,
        help="override spec.reward.pool.workers: a local Ray head with N CPUs runs custom and "
        "code_exec rewards (0: in the buffer process)",
    )
    run.set_defaults(func=cmd_run)
    val = sub.add_parser("validate", help="check a job file (schema + semantic rules)")
    val.add_argument("job")
    val.set_defaults(func=cmd_validate)
    exp = sub.add_parser("export", help="a training checkpoint as a Hugging Face model dir")
    exp.add_argument("run_dir", help="the `rlpost run` directory (holds job.yaml)")
    exp.add_argument("--step", type=int, required=True, help="checkpoint step")
    exp.add_argument("out", help="output directory")
    exp.set_defaults(func=cmd_export)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
