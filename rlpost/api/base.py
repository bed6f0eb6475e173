"""The API's identity (group, version, kind), the base model with camelCase aliases, CEL
helpers and the enums every part of the spec uses."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

GROUP = "rlpost.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RLPostTrainJob"
PLURAL = "rlposttrainjobs"
SHORT_NAME = "rljob"


def cel(rule: str, message: str) -> dict[str, str]:
    """One CEL rule as the API server expects it in `x-kubernetes-validations`."""
    return {"rule": rule, "message": message}


class Model(BaseModel):
    """Base: camelCase aliases, unknown fields rejected (a typo is an error, not a no-op)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it appears in YAML / on the API server."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# ---------------------------------------------------------------------------- enums


class Mode(StrEnum):
    DISAGGREGATED = "disaggregated"  # trainer GPUs and rollout GPUs are separate pods
    COLOCATED = "colocated"  # one worker pod runs trainer ranks and an engine on the same GPUs


class RouterPolicy(StrEnum):
    CACHE_AWARE = "cache_aware"
    ROUND_ROBIN = "round_robin"
    RANDOM = "random"
    POWER_OF_TWO = "power_of_two"
    MANUAL = "manual"  # sticky sessions by the X-SMG-Routing-Key header


class Algorithm(StrEnum):
    GRPO = "grpo"  # group-normalised advantages, token ratio clipped (PPO-style)
    GSPO = "gspo"  # group-normalised advantages, one ratio per sequence, clipped per sequence
    DAPO = "dapo"  # GRPO + decoupled clip (clipHigh > clipLow), token-mean, overlong shaping
    REINFORCE_PP = "reinforce_pp"  # REINFORCE++: baseline and normalisation over the batch
    PPO = "ppo"  # a value model (critic): per-token GAE advantages, token ratio clipped


class LossAggregation(StrEnum):
    """How per-token losses become one number (the whole batch's, whatever the sharding)."""

    TOKEN_MEAN = "token-mean"  # mean over every trained token of the batch
    SEQ_MEAN_TOKEN_SUM = "seq-mean-token-sum"  # sum over each sequence, mean over sequences
    SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"  # mean over each sequence, then over sequences


class RewardType(StrEnum):
    EXACT_MATCH = "exact_match"  # response (stripped) equals the label
    MATH = "math"  # Math-Verify: the \\boxed{} / last answer equals the label mathematically
    REMOTE = "remote"  # POST to reward.url
    CUSTOM = "custom"  # python path "pkg.module:function"
    CODE_EXEC = "code_exec"  # the response's Python runs against the label's hidden tests


class Transport(StrEnum):
    AUTO = "auto"  # nccl when disaggregated, ipc when colocated (gloo on CPU)
    NCCL = "nccl"
    GLOO = "gloo"
    IPC = "ipc"
    DISK = "disk"


class TrainerBackend(StrEnum):
    TORCH = "torch"
    MEGATRON = "megatron"


class EngineKind(StrEnum):
    SGLANG = "sglang"  # python -m sglang.launch_server (the images)
    REFERENCE = "reference"  # rlpost's torch engine with the same HTTP contract (CPU, tests)


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    ADMITTED = "Admitted"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    INVALID = "Invalid"
