"""`python -m rlpost_rollout.buffer --port P`: the data buffer + rollout driver."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import uvicorn

from rlpost.logs import setup_logging
from rlpost.models import TINY_DEFAULTS, ModelError, build_tokenizer
from rlpost.refuse import refuse_spec
from rlpost_rollout import config
from rlpost_rollout.buffer.app import Buffer, batch_timeout_default, create_app
from rlpost_rollout.buffer.dataset import DatasetError, load_function_rows, load_jsonl
from rlpost_rollout.buffer.driver import Driver, DriverConfig
from rlpost_rollout.buffer.evaluation import Evaluator, load_eval_prompts
from rlpost_rollout.buffer.metrics import BufferMetrics
from rlpost_rollout.buffer.store import Store
from rlpost_rollout.extensions import SampleBudget, check_spec_functions
from rlpost_rollout.rewards import make_reward
from rlpost_rollout.rewards.pool import POOLED, PoolMetrics, RewardPool, connect

log = logging.getLogger("rlpost_rollout.buffer")


def context_length(source) -> int:
    """The model's context (prompts that cannot fit are rejected rows, not engine errors)."""
    if source.config is not None:
        return int({**TINY_DEFAULTS, **source.config}["max_position_embeddings"])
    cfg = Path(source.path or "", "config.json")
    if cfg.exists():
        return int(json.loads(cfg.read_text()).get("max_position_embeddings", 1 << 30))
    return 1 << 30


def reward_fn(spec, metrics: BufferMetrics):
    """The spec's reward; custom and code_exec ones on the job's Ray pool when it has one."""
    pool_spec = spec.pool
    if pool_spec.workers == 0 or spec.type not in POOLED:
        return make_reward(spec)
    address = os.environ.get("RLPOST_RAY_ADDRESS")
    if not address:
        raise ValueError("rewards.pool.workers > 0 but RLPOST_RAY_ADDRESS (the pool) is not set")
    connect(address)
    in_flight = pool_spec.max_in_flight or max(
        1, int(2 * pool_spec.workers * pool_spec.cpus_per_worker)
    )
    log.info(
        "reward pool connected",
        extra={"address": address, "workers": pool_spec.workers, "max_in_flight": in_flight},
    )
    pool = RewardPool(
        spec,
        max_in_flight=in_flight,
        timeout_s=spec.timeout_seconds,
        max_retries=pool_spec.max_retries,
        metrics=PoolMetrics(metrics.job, metrics.registry),
    )
    return make_reward(spec, pool)


def load_prompts(spec, tokenizer, functions):
    """data.source's rows when it is set, else the JSONL file data.prompts."""
    max_ctx = context_length(spec.model)
    if spec.data.source:
        _, fn = functions["data.source"]
        return load_function_rows(
            fn, spec.data.source, spec.data.wire(), spec.seed, tokenizer, max_ctx
        )
    return load_jsonl(
        spec.data.prompts,
        spec.data.prompt_key,
        spec.data.label_key,
        tokenizer,
        max_ctx,
        seed=spec.seed,
        messages_key=spec.data.messages_key,
        apply_chat_template=spec.data.apply_chat_template,
    )


def build(job, state_dir: str, router_url: str, functions=None) -> Buffer:
    """`functions`: the spec's custom functions by field (extensions.check_spec_functions)."""
    spec = job.spec
    functions = check_spec_functions(spec) if functions is None else functions
    metrics = BufferMetrics(config.job_name(job))
    tokenizer = build_tokenizer(spec.model)
    source = load_prompts(spec, tokenizer, functions)
    metrics.rejected_rows.inc(len(source.rejected))
    store = Store(state_dir)
    cfg = DriverConfig(
        router_url=router_url.rstrip("/"),
        group_size=spec.algorithm.group_size,
        batch_size=spec.algorithm.rollout_batch_size,
        max_staleness=spec.rollout.max_staleness,
        max_new_tokens=spec.rollout.max_new_tokens,
        temperature=spec.rollout.temperature,
        stop=list(spec.rollout.stop),
        dynamic_sampling=spec.algorithm.dynamic_sampling,
        seed=spec.seed,
        over_sampling=spec.rollout.over_sampling,
        partial_rollouts=spec.rollout.partial_rollouts,
        budget=SampleBudget(*spec.rollout.sample_budget()),
        max_inflight_groups=int(
            os.environ.get("RLPOST_MAX_INFLIGHT_GROUPS", spec.algorithm.rollout_batch_size)
        ),
    )
    driver = Driver(
        cfg,
        store,
        source,
        reward_fn(spec.reward, metrics),
        tokenizer,
        metrics,
        generate=functions.get("rollout.generate"),
        group_filter=functions.get("algorithm.filter"),
    )
    buffer = Buffer(
        store,
        driver,
        cfg.batch_size,
        cfg.max_staleness,
        metrics,
        source.rejected,
        batch_timeout_default(),
    )
    if spec.eval is not None:
        held_out = load_eval_prompts(spec, tokenizer, context_length(spec.model))
        metrics.rejected_rows.inc(len(held_out.rejected))
        buffer.evaluator = Evaluator(spec.eval, held_out, driver, cfg.max_new_tokens)
    metrics.weight_version.set(store.state.version)
    metrics.depth.set(len(store.state.ready))
    resume = os.environ.get("RLPOST_RESUME_STEP")
    if resume not in (None, "") and int(resume) not in store.state.resumes:
        # Applied once per step: a buffer restarted later with the same env keeps its state.
        buffer.resume(int(resume), None if int(resume) in store.state.step_start_cursor else 0)
    return buffer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--config", default=None)
    args = parser.parse_args(argv)
    setup_logging("buffer")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    job = config.load_job(args.config)
    state_dir = os.environ.get("RLPOST_STATE_DIR")
    router = os.environ.get("RLPOST_ROUTER_URL")
    if not state_dir or not router:
        sys.exit("the buffer needs RLPOST_STATE_DIR (durable directory) and RLPOST_ROUTER_URL")
    try:  # every custom function (reward, data source, generate, filter) imports and fits
        functions = check_spec_functions(job.spec)
    except ValueError as exc:
        refuse_spec("buffer", str(exc))
    try:
        buffer = build(job, state_dir, router, functions)
    except ModelError as exc:  # the spec's model/tokenizer cannot work: InvalidSpec
        refuse_spec("buffer", str(exc))
    except (DatasetError, ValueError) as exc:
        log.error("buffer cannot start", extra={"error": str(exc)})
        sys.exit(f"buffer cannot start: {exc}")
    log.info("buffer ready", extra={"port": args.port, "router": router, "state_dir": state_dir})
    uvicorn.run(
        create_app(buffer, config.token()), host=args.host, port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
