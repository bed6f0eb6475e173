"""Held-out evaluation (`spec.eval`, docs/CONTRACTS.md "Buffer API", POST /eval).

Every eval row is generated once greedily (temperature 0) and k = `eval.samples` times
sampled at `eval.temperature` through the router, at the engines' current weights, and scored
with the job's reward. Sample j of eval row i is drawn with `eval_seed(seed, i, j)`: the same
seeds at every eval, so two evals differ only by the weights (and a rerun repeats them).

Nothing here touches the store: eval groups are never accepted, served or logged, and the
training cursor does not move. The answer of a step is kept in memory, so a retried
POST /eval of the same step gets the same numbers without generating again.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from typing import Any

from rlpost_rollout.buffer.dataset import PromptSource, load_jsonl
from rlpost_rollout.buffer.driver import Driver, sample_seed
from rlpost_rollout.extensions import Aborted, SampleRouter
from rlpost_rollout.rewards import RewardError

log = logging.getLogger("rlpost_rollout.buffer.eval")
# Eval prompt indices live far above any training prompt index, so no eval sample shares a
# seed with a training sample.
EVAL_INDEX_BASE = 1 << 40
MAX_IN_FLIGHT = 256  # eval samples in flight at once (next to the driver's training groups)
ABORT_RETRIES = 5  # a sample aborted by a weight update is generated again this many times


def eval_seed(run_seed: int, row: int, j: int) -> int:
    return sample_seed(run_seed, EVAL_INDEX_BASE + row, j)


def load_eval_prompts(spec, tokenizer, max_ctx: int) -> PromptSource:
    """spec.eval.prompts, read like data.prompts (keys, chat template, row rejection)."""
    return load_jsonl(
        spec.eval.prompts,
        spec.data.prompt_key,
        spec.data.label_key,
        tokenizer,
        max_ctx,
        seed=spec.seed,
        messages_key=spec.data.messages_key,
        apply_chat_template=spec.data.apply_chat_template,
        field="eval.prompts",
    )


def pass_at_k(rewards: list[list[float]], threshold: float = 1.0) -> float:
    """The fraction of prompts with at least one of their k samples at `threshold` or more."""
    return statistics.fmean(1.0 if max(r) >= threshold else 0.0 for r in rewards)


class Evaluator:
    def __init__(self, eval_spec, source: PromptSource, driver: Driver, max_new_tokens: int):
        self.spec = eval_spec
        self.source = source
        self.driver = driver
        self.max_new_tokens = eval_spec.max_new_tokens or max_new_tokens
        self.results: dict[int, dict[str, Any]] = {}
        self.lock = asyncio.Lock()
        self.limit = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.reward_errors = 0

    async def run(self, step: int) -> dict[str, Any]:
        async with self.lock:  # one eval at a time; a retried step gets its first answer
            if step in self.results:
                return self.results[step]
            t0 = time.monotonic()
            version = self.driver.store.state.version
            self.reward_errors = 0
            rows = self.source.rows
            k = self.spec.samples
            per_row = await asyncio.gather(*(self._row(step, i, row) for i, row in enumerate(rows)))
            greedy = [g for g, _ in per_row]
            sampled = [s for _, s in per_row]
            result = {
                "step": step,
                "weight_version": version,
                "greedy_reward_mean": statistics.fmean(greedy),
                "pass_at_k": pass_at_k(sampled),
                "mean_reward_at_k": statistics.fmean(x for s in sampled for x in s),
                "n_prompts": len(rows),
                "k": k,
                "reward_errors": self.reward_errors,
                "seconds": time.monotonic() - t0,
            }
            self.results[step] = result
            log.info("eval done", extra=result)
            return result

    async def _row(self, step: int, i: int, row) -> tuple[float, list[float]]:
        seed = self.driver.cfg.seed
        jobs = [self._sample(step, i, row, "g", 0.0, eval_seed(seed, i, 0))]
        jobs += [
            self._sample(step, i, row, str(j), self.spec.temperature, eval_seed(seed, i, j))
            for j in range(self.spec.samples)
        ]
        rewards = await asyncio.gather(*jobs)
        return rewards[0], list(rewards[1:])

    async def _sample(self, step: int, i: int, row, tag: str, temp: float, seed: int) -> float:
        """One eval sample's reward (0.0 when the reward fails: counted in reward_errors)."""
        rid = f"eval{step}-{i}-{tag}"
        sampling = {
            "max_new_tokens": self.max_new_tokens,
            "temperature": temp,
            "stop": self.driver.cfg.stop or None,
            "sampling_seed": seed,
        }
        async with self.limit:
            for attempt in range(ABORT_RETRIES + 1):
                router = SampleRouter(
                    self.driver._generate,
                    rid if attempt == 0 else f"{rid}-r{attempt}",
                    sampling,
                    self.driver.tokenizer,
                    self.driver.store.state.version,
                    budget=self.driver.cfg.budget,
                    prompt_ids=list(row.prompt_ids),
                )
                try:
                    out = await self.driver._sample(row, router)
                    break
                except Aborted:
                    if attempt == ABORT_RETRIES:
                        raise
            try:
                return float(await self.driver.reward(row.prompt, out["text"], row.label, key=rid))
            except RewardError as exc:
                self.reward_errors += 1
                log.error("eval reward failed", extra={"rid": rid, "error": str(exc)})
                return 0.0
