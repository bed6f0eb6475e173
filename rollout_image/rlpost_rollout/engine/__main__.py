"""`python -m rlpost_rollout.engine --port P`: reads the job spec ($RLPOST_CONFIG), builds the
model and serves SGLang's HTTP contract on it.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch
import uvicorn

from rlpost.logs import setup_logging
from rlpost.models import model_problems
from rlpost.refuse import refuse_spec
from rlpost_rollout import config
from rlpost_rollout.engine.core import Engine
from rlpost_rollout.engine.routes import create_app

log = logging.getLogger("rlpost_rollout.engine")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rlpost_rollout.engine", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--config", default=None, help="job.yaml (default $RLPOST_CONFIG)")
    parser.add_argument("--max-batch", type=int, default=32)
    args = parser.parse_args(argv)
    setup_logging("engine")
    torch.set_num_threads(int(os.environ.get("RLPOST_TORCH_THREADS", "1")))
    job = config.load_job(args.config)
    device = "cuda" if job.spec.rollout.gpus_per_engine > 0 and torch.cuda.is_available() else "cpu"
    problems = model_problems(job.spec.model, device=device)
    if problems:
        refuse_spec("engine", "; ".join(problems))
    engine = Engine(job, max_batch=args.max_batch)
    app = create_app(engine, config.token())
    log.info("engine ready", extra={"port": args.port, "weight_version": engine.weight_version})
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
