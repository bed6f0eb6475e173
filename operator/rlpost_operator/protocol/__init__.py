"""The reconcile protocol as small named steps (Kueue's jobframework, for a custom kind).

`reconcile(observed) -> Plan` is pure: it reads a snapshot of the job, its Workload, its
children, pods, progress ConfigMap and the ResourceFlavors, and returns the writes to make
(only those that change something), the status the job should have, and the Events of the
transitions. The handlers execute a Plan; they decide nothing.

Steps, in order (the first that owns the situation ends the pass):
  validate        spec parses, semantic checks, queue and priority class exist -> else
                  InvalidSpec, nothing created
  finished        Succeeded/Failed: compute children stopped, Workload Finished, the
                  the rest removed after the TTL
  ensure_workload one Workload per job (created while no pod exists), queue label on the
                  job, Workload.spec.active follows spec.suspend
  progress        mirror `<job>-progress` into status; done -> Succeeded
  not_admitted    evicted / suspended / waiting: stop the gang, once its pods are gone
                  clear the quota reservation (QuotaReserved False, admission removed,
                  Requeued), phase Queued or Suspended with Kueue's message
  failures        a failed trainer/worker pod restarts the gang from the last checkpoint,
                  past failurePolicy.maxRestarts -> Failed
  start           admitted: children with the flavors' nodeSelector/tolerations, the
                  podset label, RLPOST_RESUME_STEP; Running when every pod is Ready
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rlpost import api

from .. import builders as b
from ..constants import HASH_ANNOTATION, INSTANCE_LABEL, RESOURCE_IN_USE_FINALIZER
from .admission import AdmissionSteps
from .facts import (
    _admission_wait,
    _annotation,
    _cond_msg,
    _cond_reason,
    _label,
    _normal,
    claim_bound,
    cond,
    deleting,
    has_quota_reservation,
    invalid_spec_exit,
    is_true,
    job_ref,
    needs_write,
    parse_ts,
    pod_failure,
    pod_ready,
    progress_numbers,
    progress_only,
    set_condition,
    ts,
)
from .gang import GangSteps
from .model import (
    CHILD_INVALID_SPEC,
    CHILD_REJECTED,
    COMPUTE_KINDS,
    COMPUTE_ROLES,
    CONDITION_TYPES,
    FINISHED_PHASES,
    PODS_READY_TIMEOUT,
    REQUEUE_BACKOFF_MAX_S,
    REQUEUE_BACKOFF_S,
    SERVING_ROLES,
    WAS_ADMITTED,
    Action,
    ChildError,
    Observed,
    Plan,
    api_message,
    retryable,
)


class _Pass(AdmissionSteps, GangSteps):
    """A reconcile pass: the base tools and every step (admission.py, gang.py)."""


def reconcile(obs: Observed) -> Plan:
    """One pass of the protocol over a snapshot."""
    p = _Pass(obs)
    if not p.validate():
        return p.finish()
    if p.finished():
        return p.finish()
    if p.ensure_workload():
        return p.finish()
    if p.progress():
        return p.finish()
    if p.not_admitted():
        return p.finish()
    if p.failures():
        return p.finish()
    return p.start()


def orphan_workload_plan(wl: dict[str, Any]) -> list[Action]:
    """A Workload whose job is gone (GC deletes it): drop the finalizer so it can go (one
    made by an operator before 0.2, which added Kueue's resource-in-use finalizer)."""
    if deleting(wl) and RESOURCE_IN_USE_FINALIZER in (wl["metadata"].get("finalizers") or []):
        fins = [f for f in wl["metadata"]["finalizers"] if f != RESOURCE_IN_USE_FINALIZER]
        return [
            Action(
                "patch",
                "Workload",
                wl["metadata"]["name"],
                {
                    "metadata": {
                        "finalizers": fins,
                        "resourceVersion": wl["metadata"]["resourceVersion"],
                    }
                },
                why="job deleted",
            )
        ]
    return []


def job_of(obj: dict[str, Any]) -> str | None:
    return _label(obj, INSTANCE_LABEL)


__all__ = [
    "claim_bound",
    "CHILD_INVALID_SPEC",
    "CHILD_REJECTED",
    "COMPUTE_KINDS",
    "COMPUTE_ROLES",
    "CONDITION_TYPES",
    "ChildError",
    "FINISHED_PHASES",
    "HASH_ANNOTATION",
    "PODS_READY_TIMEOUT",
    "REQUEUE_BACKOFF_MAX_S",
    "REQUEUE_BACKOFF_S",
    "SERVING_ROLES",
    "UTC",
    "WAS_ADMITTED",
    "_admission_wait",
    "_annotation",
    "_cond_msg",
    "_cond_reason",
    "_normal",
    "api",
    "api_message",
    "b",
    "cond",
    "datetime",
    "has_quota_reservation",
    "invalid_spec_exit",
    "is_true",
    "job_of",
    "job_ref",
    "needs_write",
    "orphan_workload_plan",
    "parse_ts",
    "pod_failure",
    "pod_ready",
    "progress_numbers",
    "progress_only",
    "reconcile",
    "retryable",
    "set_condition",
    "ts",
]
