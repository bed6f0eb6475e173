"""The checks that need more than CEL: `name_errors` and `semantic_errors` (InvalidSpec in
the operator, a clear error in `rlpost run`)."""

from __future__ import annotations

import re

from rlpost.api.base import (
    Algorithm,
    Mode,
    RewardType,
    TrainerBackend,
    Transport,
)
from rlpost.api.job import (
    JOB_NAME_PATTERN,
    MAX_JOB_NAME,
)
from rlpost.api.spec import (
    DATA_NEEDS_INPUT,
    EVAL_HELD_OUT,
    PPO_MEGATRON,
    PPO_ONLY,
    RLPostTrainJobSpec,
)

# ---------------------------------------------------------------------------- semantics


def name_errors(name: str) -> list[str]:
    """The CEL rules on metadata.name (JOB_NAME_RULES), for `rlpost run` and the operator
    (a CRD installed before the rules existed lets such a name through)."""
    errors: list[str] = []
    if len(name) > MAX_JOB_NAME:
        errors.append(
            f"metadata.name {name!r} has {len(name)} characters, at most {MAX_JOB_NAME} are "
            f"allowed: its children ({name}-trainer, ...) would overflow the 63-character "
            "label limit; use a shorter name"
        )
    if not re.match(JOB_NAME_PATTERN, name):
        errors.append(
            f"metadata.name {name!r} must be a DNS-1035 label (lowercase letters, digits and "
            "'-', starting with a letter): the job's Services are named after it"
        )
    return errors


def semantic_errors(spec: RLPostTrainJobSpec) -> list[str]:
    """Checks the API server cannot do (or that `rlpost run` must do without one).

    Each message says what to change. CEL rules above are repeated here so that `rlpost run`
    (no API server) rejects the same specs with the same words.
    """
    errors: list[str] = []
    if spec.mode == Mode.COLOCATED and spec.rollout.max_staleness != 0:
        errors.append("colocated mode is synchronous: set rollout.maxStaleness to 0")
    if spec.mode == Mode.COLOCATED and spec.weight_sync.transport not in (
        Transport.AUTO,
        Transport.IPC,
        Transport.DISK,
    ):
        errors.append(
            "colocated mode syncs weights in-process: weightSync.transport must be auto, ipc "
            "or disk"
        )
    if spec.mode == Mode.DISAGGREGATED and spec.weight_sync.transport == Transport.IPC:
        errors.append("ipc weight sync needs colocated mode; use nccl or auto")
    tp_pp = spec.trainer.parallelism.tensor * spec.trainer.parallelism.pipeline
    if (spec.trainer.replicas * spec.trainer.gpus_per_pod) % tp_pp:
        errors.append(
            "trainer.parallelism.tensor * pipeline must divide trainer.replicas * gpusPerPod "
            f"({tp_pp} does not divide {spec.trainer.replicas * spec.trainer.gpus_per_pod})"
        )
    alg = spec.algorithm
    if alg.overlong_buffer is not None and alg.overlong_buffer >= spec.rollout.max_new_tokens:
        errors.append("algorithm.overlongBuffer must be less than rollout.maxNewTokens")
    ppo_fields = (alg.critic_lr, alg.gamma, alg.gae_lambda)
    if alg.name != Algorithm.PPO and any(x is not None for x in ppo_fields):
        errors.append(PPO_ONLY)
    if alg.name == Algorithm.PPO and spec.trainer.backend == TrainerBackend.MEGATRON:
        errors.append(PPO_MEGATRON)
    if spec.reward.type == RewardType.REMOTE and not spec.reward.url:
        errors.append("reward.url is required for remote")
    if spec.reward.type == RewardType.CUSTOM and not spec.reward.function:
        errors.append('reward.function ("pkg.module:function") is required for custom')
    if spec.data.prompts is None and spec.data.source is None:
        errors.append(DATA_NEEDS_INPUT)
    if spec.eval is not None and spec.data.prompts and spec.eval.prompts == spec.data.prompts:
        errors.append(EVAL_HELD_OUT)
    if spec.model.path is None and spec.model.config is None:
        errors.append("model: set model.path (weights directory) or model.config (random init)")
    chat = spec.data.messages_key is not None or spec.data.apply_chat_template
    if chat and (spec.model.tokenizer or "").startswith("char:"):
        errors.append(
            "data.messagesKey / data.applyChatTemplate need a tokenizer with a chat template; "
            "the character tokenizer (model.tokenizer: char:...) has none"
        )
    if spec.algorithm.rollout_batch_size * spec.algorithm.group_size > 1_000_000:
        errors.append("algorithm.rolloutBatchSize * groupSize must be at most 1,000,000")
    return errors
