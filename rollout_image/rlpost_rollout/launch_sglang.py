"""`python -m rlpost_rollout.launch_sglang --port P`: SGLang's server, configured from the spec.

Control endpoints need the job token: SGLang's `--admin-api-key` guards exactly those
(weights, memory, pause, abort, flush) while /generate and health stay open for the router.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rlpost.logs import setup_logging
from rlpost.storage import resolve_spec_paths
from rlpost_rollout import config
from rlpost_rollout.ready import UNSYNCED_VERSION

log = logging.getLogger("rlpost_rollout.launch_sglang")


def sglang_argv(
    job,
    port: int,
    *,
    host: str = "0.0.0.0",
    token: str | None = None,
    python: str | None = None,
    wait_for_weights: bool = False,
) -> list[str]:
    """The `python -m sglang.launch_server` command line for this job (pure; unit-tested).

    wait_for_weights (a cluster): the engine starts at weight version -1, which no trainer
    push carries, so `rlpost_rollout.ready` keeps the pod not Ready until the first push."""
    spec = resolve_spec_paths(job.spec)  # model paths inside the /models mount
    if not spec.model.path:
        raise ValueError(
            "SGLang needs model.path (a weights directory); model.config builds random weights "
            "only for the reference engine (rollout.engine: reference)"
        )
    argv = [
        python or sys.executable, "-m", "sglang.launch_server",
        "--model-path", spec.model.path,
        "--host", host,
        "--port", str(port),
        "--tp-size", str(max(1, spec.rollout.gpus_per_engine)),
        "--dtype", spec.model.dtype,
        "--weight-version", UNSYNCED_VERSION if wait_for_weights else "0",
        "--enable-metrics",
    ]  # fmt: skip
    if spec.model.tokenizer and not spec.model.tokenizer.startswith("char:"):
        argv += ["--tokenizer-path", spec.model.tokenizer]
    if token:
        argv += ["--admin-api-key", token]
    user = list(spec.rollout.sglang_args)
    ours = {a for a in argv if a.startswith("--")}
    clash = sorted(a.split("=")[0] for a in user if a.split("=")[0] in ours)
    if clash:
        raise ValueError(f"rollout.sglangArgs must not set {clash}: rlpost sets them from the spec")
    return argv + user


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--config", default=None)
    args = parser.parse_args(argv)
    setup_logging("engine")
    job = config.load_job(args.config)
    try:
        cmd = sglang_argv(
            job,
            args.port,
            host=args.host,
            token=config.token(),
            wait_for_weights=os.environ.get("RLPOST_WAIT_FOR_WEIGHTS") == "1",
        )
    except ValueError as exc:
        sys.exit(f"sglang cannot start: {exc}")
    redacted = ["<token>" if config.token() and a == config.token() else a for a in cmd]
    log.info("starting sglang", extra={"argv": redacted[1:]})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
