"""The RLPostTrainJob API (rlpost.dev/v1alpha1) as pydantic models.

This module is the single source of truth for the job spec: the CRD in crds/ is generated
from it (`python -m rlpost.crdgen`), the operator parses custom objects with it, and every
role (`rlpost run`, buffer, engines, trainer) reads its config as these models.

Field names are snake_case in Python and camelCase on the wire (Kubernetes style).
Cross-field rules that the API server can enforce are written as CEL (`x-kubernetes-
validations`) next to the model they constrain; `semantic_errors()` holds the checks that
need more than CEL (they surface as the InvalidSpec condition in the operator and as a
clear error in `rlpost run`).
"""

from __future__ import annotations

from rlpost.api.base import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    VERSION,
    Algorithm,
    EngineKind,
    LossAggregation,
    Mode,
    Model,
    Phase,
    RewardType,
    RouterPolicy,
    TrainerBackend,
    Transport,
    cel,
)
from rlpost.api.job import (
    JOB_NAME_PATTERN,
    JOB_NAME_RULES,
    MAX_JOB_NAME,
    Admission,
    Condition,
    ObjectMeta,
    RLPostTrainJob,
    RLPostTrainJobStatus,
)
from rlpost.api.semantics import (
    name_errors,
    semantic_errors,
)
from rlpost.api.spec import (
    DAPO_CLIP_HIGH,
    DATA_NEEDS_INPUT,
    PPO_GAE_LAMBDA,
    PPO_GAMMA,
    PPO_MEGATRON,
    PPO_ONLY,
    AlgorithmSpec,
    CheckpointSpec,
    DataSpec,
    EvalSpec,
    FailurePolicy,
    FunctionPath,
    ModelSource,
    Parallelism,
    Quantity,
    Resources,
    RewardPoolSpec,
    RewardSpec,
    RLPostTrainJobSpec,
    RolloutSpec,
    RouterSpec,
    SandboxSpec,
    TrainerSpec,
    WeightSyncSpec,
)

__all__ = [
    "GROUP",
    "VERSION",
    "API_VERSION",
    "KIND",
    "PLURAL",
    "SHORT_NAME",
    "cel",
    "Model",
    "Mode",
    "RouterPolicy",
    "Algorithm",
    "LossAggregation",
    "RewardType",
    "Transport",
    "TrainerBackend",
    "EngineKind",
    "Phase",
    "Quantity",
    "FunctionPath",
    "Resources",
    "ModelSource",
    "Parallelism",
    "TrainerSpec",
    "RouterSpec",
    "RolloutSpec",
    "DAPO_CLIP_HIGH",
    "PPO_GAMMA",
    "PPO_GAE_LAMBDA",
    "PPO_ONLY",
    "PPO_MEGATRON",
    "AlgorithmSpec",
    "DATA_NEEDS_INPUT",
    "DataSpec",
    "EvalSpec",
    "SandboxSpec",
    "RewardPoolSpec",
    "RewardSpec",
    "WeightSyncSpec",
    "CheckpointSpec",
    "FailurePolicy",
    "RLPostTrainJobSpec",
    "Condition",
    "Admission",
    "RLPostTrainJobStatus",
    "ObjectMeta",
    "MAX_JOB_NAME",
    "JOB_NAME_PATTERN",
    "JOB_NAME_RULES",
    "RLPostTrainJob",
    "name_errors",
    "semantic_errors",
]
