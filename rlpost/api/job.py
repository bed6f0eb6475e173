"""The whole object: status (phase, conditions, admission, progress), metadata with the
job-name rules, and `RLPostTrainJob`."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from rlpost.api.base import (
    API_VERSION,
    GROUP,
    KIND,
    VERSION,
    Model,
    Phase,
    cel,
)
from rlpost.api.spec import (
    RLPostTrainJobSpec,
)

# ---------------------------------------------------------------------------- status


class Condition(Model):
    """metav1.Condition."""

    type: str
    status: Annotated[str, Field(pattern=r"^(True|False|Unknown)$")]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class Admission(Model):
    cluster_queue: str | None = None
    flavors: dict[str, str] = Field(default_factory=dict)  # podSet -> flavor (gpu resource)


class RLPostTrainJobStatus(Model):
    model_config = ConfigDict(extra="allow")

    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    workload_name: str | None = None
    admission: Admission | None = None
    step: int | None = None
    weight_version: int | None = None
    last_checkpoint_step: int | None = None
    # Mean reward of the trainer's last 5 steps (its progress ConfigMap).
    reward_mean: float | None = None
    restarts: int | None = None
    # Engine, router and buffer pods that failed and were replaced or restarted (the gang
    # goes on), per role: {"rollout": 1, "buffer": 0, ...}.
    role_restarts: dict[str, int] | None = None
    # Set by the operator when it (re)starts the children: the checkpoint step they resume
    # from (RLPOST_RESUME_STEP), and pods Ready / pods expected of the running gang.
    resume_step: int | None = None
    ready_pods: str | None = None
    # Gangs requeued because their pods were not Ready within
    # failurePolicy.podsReadyTimeoutSeconds, and when the current backoff ends.
    pods_ready_requeues: int | None = None
    requeue_at: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    observed_generation: int | None = None


class ObjectMeta(Model):
    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)

    name: str = "rljob"
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


# Child names are `<job>-<role>`; a pod's name is also its hostname (a DNS label: at most 63
# characters), the longest being a reward-pool worker's `<job>-ray-worker-<index>`, so a job
# name may have at most 44 characters. Child Services are DNS-1035 labels: lowercase
# letters, digits and '-', starting with a letter.
MAX_JOB_NAME = 44
JOB_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
JOB_NAME_RULES = [
    cel(
        f"size(self.metadata.name) <= {MAX_JOB_NAME}",
        f"metadata.name must be at most {MAX_JOB_NAME} characters: the job's children are "
        f"named <name>-trainer, <name>-rollout, ... and their pods' labels are limited to 63",
    ),
    cel(
        f"self.metadata.name.matches('{JOB_NAME_PATTERN}')",
        "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting "
        "with a letter): the job's Services are named after it",
    ),
]


class RLPostTrainJob(Model):
    """The whole object, as `kubectl apply -f` or `rlpost run` reads it."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": JOB_NAME_RULES})

    api_version: Annotated[str, Field(pattern=rf"^{GROUP}/{VERSION}$")] = API_VERSION
    kind: Annotated[str, Field(pattern=rf"^{KIND}$")] = KIND
    metadata: ObjectMeta = ObjectMeta()
    spec: RLPostTrainJobSpec
    status: RLPostTrainJobStatus | None = None
