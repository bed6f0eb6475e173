"""Inputs and outputs of a reconcile pass: the snapshot (Observed), the writes (Action),
the result (Plan), refused child writes (ChildError), and the protocol's constants."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rlpost import api

from .. import validation
from ..constants import (
    ROLE_BUFFER,
    ROLE_POOL,
    ROLE_ROLLOUT,
    ROLE_ROUTER,
    TRAINING_ROLES,
)

COMPUTE_KINDS = ("Pod",)  # the gang is pods the operator creates (builders/compute.py)
COMPUTE_ROLES = (*TRAINING_ROLES, ROLE_ROLLOUT, ROLE_ROUTER, ROLE_BUFFER, ROLE_POOL)
# Roles whose pod failures do not restart the gang (replaced one by one; the loop goes on).
# A reward-pool pod is replaced by the operator; Ray re-runs the tasks it held.
SERVING_ROLES = (ROLE_ROLLOUT, ROLE_ROUTER, ROLE_BUFFER, ROLE_POOL)
CONDITION_TYPES = ("Queued", "Admitted", "Running", "Suspended", "Succeeded", "Failed")
FINISHED_PHASES = (api.Phase.SUCCEEDED.value, api.Phase.FAILED.value)
PODS_READY_TIMEOUT = "PodsReadyTimeout"
CHILD_REJECTED = "ChildRejected"
CHILD_INVALID_SPEC = "InvalidSpec"
# Backoff of a gang requeued after a pods-ready timeout: 60 s, doubling, at most 1 h
# (Kueue's waitForPodsReady.requeuingStrategy defaults).
REQUEUE_BACKOFF_S = 60.0
REQUEUE_BACKOFF_MAX_S = 3600.0
WAS_ADMITTED = (
    api.Phase.ADMITTED.value,
    api.Phase.RUNNING.value,
    api.Phase.RESTARTING.value,
    api.Phase.SUSPENDED.value,
)


# ---------------------------------------------------------------------------- inputs/outputs


@dataclass
class Observed:
    job: dict[str, Any]
    workload: dict[str, Any] | None = None
    children: list[dict[str, Any]] = field(default_factory=list)  # labelled instance=<job>
    pods: list[dict[str, Any]] = field(default_factory=list)
    # Failed gang pods seen by the watch but already deleted (by the operator or a user).
    failed_pods: list[dict[str, Any]] = field(default_factory=list)
    flavors: dict[str, dict[str, Any]] = field(default_factory=dict)
    # StorageClass name -> volumeBindingMode (None: unknown; no pod then waits for a claim).
    binding_modes: dict[str, str] | None = None
    default_queue_exists: bool = False
    priority_class_exists: bool = True
    priority: int | None = None  # the WorkloadPriorityClass's value
    # GPU nodes the job's queue can use (read by the controller before admission only).
    capacity: validation.QueueCapacity | None = None
    # Writes of earlier passes that the API server refused (the controller remembers them).
    child_errors: list[ChildError] = field(default_factory=list)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class ChildError:
    """The API server's answer to a write of a child (kept until a write of it succeeds)."""

    kind: str
    name: str
    code: int
    message: str
    spec_hash: str | None = None  # the hash of the object that was refused

    @property
    def retryable(self) -> bool:
        return retryable(self.code, self.message)

    def describe(self) -> str:
        return f"the API server refused {self.kind} {self.name} (HTTP {self.code}): {self.message}"


def retryable(code: int, message: str = "") -> bool:
    """5xx, no answer, timeouts, conflicts, throttling, namespace ResourceQuota limits and
    404 (an object the write refers to is not there yet: a RoleBinding applied in the same
    pass as its Role) heal on their own; any other 4xx (invalid, forbidden, too large) does
    not."""
    if code == 0 or code >= 500 or code in (404, 408, 409, 429):
        return True
    return code == 403 and "exceeded quota" in message


def api_message(body: str) -> str:
    """The `message` of a metav1.Status body (else the body itself), on one line."""
    try:
        msg = json.loads(body).get("message") or body
    except (ValueError, AttributeError):
        msg = body
    return " ".join(str(msg).split())[:900]


@dataclass
class Action:
    """One write. verb: apply | create | delete | patch | patch_status."""

    verb: str
    kind: str
    name: str
    body: dict[str, Any] | None = None
    why: str = ""

    def __repr__(self) -> str:  # never print bodies (the token Secret is one)
        return f"{self.verb} {self.kind}/{self.name} ({self.why})"


@dataclass
class Plan:
    step: str
    actions: list[Action] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    status_changed: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    requeue_after: float | None = None
    evicted: bool = False
    restarted: bool = False
    admission_wait: float | None = None
