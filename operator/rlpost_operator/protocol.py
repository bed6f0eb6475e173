"""The reconcile protocol as small named steps (Kueue's jobframework, for a custom kind).

`reconcile(observed) -> Plan` is pure: it reads a snapshot of the job, its Workload, its
children, pods, progress ConfigMap and the ResourceFlavors, and returns the writes to make
(only those that change something), the status the job should have, and the Events of the
transitions. The handlers execute a Plan; they decide nothing.

Steps, in order (the first that owns the situation ends the pass):
  validate        spec parses, semantic checks, queue and priority class exist -> else
                  InvalidSpec, nothing created
  finished        Succeeded/Failed: compute children stopped, Workload Finished, the
                  resource-in-use finalizer dropped, the rest removed after the TTL
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

import contextlib
import copy
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from rlpost import api

from . import builders as b
from . import validation
from .constants import (
    ATTEMPT_LABEL,
    GPU,
    HASH_ANNOTATION,
    INSTANCE_LABEL,
    QUEUE_LABEL,
    RESOURCE_IN_USE_FINALIZER,
    RESUME_ANNOTATION,
    ROLE_BUFFER,
    ROLE_LABEL,
    ROLE_ROLLOUT,
    ROLE_ROUTER,
    TRAINING_ROLES,
)

COMPUTE_KINDS = ("StatefulSet", "Deployment", "Pod")
COMPUTE_ROLES = (*TRAINING_ROLES, ROLE_ROLLOUT, ROLE_ROUTER, ROLE_BUFFER)
# Roles whose pod failures do not restart the gang (replaced one by one; the loop goes on).
SERVING_ROLES = (ROLE_ROLLOUT, ROLE_ROUTER, ROLE_BUFFER)
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
    # Failed training pods seen by the watch but already deleted (by their StatefulSet).
    failed_pods: list[dict[str, Any]] = field(default_factory=list)
    flavors: dict[str, dict[str, Any]] = field(default_factory=dict)
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
    """5xx, no answer, conflicts, throttling and namespace ResourceQuota limits heal on
    their own; any other 4xx (invalid, forbidden, too large) does not."""
    if code == 0 or code >= 500 or code in (409, 429):
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


# ---------------------------------------------------------------------------- helpers


def ts(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def cond(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def is_true(obj: dict[str, Any] | None, ctype: str) -> bool:
    c = cond(obj, ctype)
    return bool(c and c.get("status") == "True")


def set_condition(
    conditions: list[dict[str, Any]],
    ctype: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> None:
    """metav1 semantics: lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    for c in conditions:
        if c["type"] == ctype:
            if c["status"] != value:
                c["lastTransitionTime"] = ts(now)
            c.update(status=value, reason=reason, message=message)
            if generation is not None:
                c["observedGeneration"] = generation
            return
    new = {
        "type": ctype,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": ts(now),
    }
    if generation is not None:
        new["observedGeneration"] = generation
    conditions.append(new)


def job_ref(job: dict[str, Any]) -> b.JobRef:
    m = job["metadata"]
    return b.JobRef(name=m["name"], namespace=m["namespace"], uid=m.get("uid", ""))


def _annotation(obj: dict[str, Any] | None, key: str) -> str | None:
    return (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(key)


def _label(obj: dict[str, Any] | None, key: str) -> str | None:
    return (((obj or {}).get("metadata") or {}).get("labels") or {}).get(key)


def deleting(obj: dict[str, Any]) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


def has_quota_reservation(wl: dict[str, Any]) -> bool:
    return is_true(wl, "QuotaReserved") or bool((wl.get("status") or {}).get("admission"))


def pod_failure(pod: dict[str, Any]) -> str | None:
    """Why a pod counts as failed: phase Failed or a container that exited non-zero."""
    st = pod.get("status") or {}
    name = pod["metadata"]["name"]
    if st.get("phase") == "Failed":
        return f"pod {name} failed ({st.get('reason') or 'phase Failed'}: {st.get('message', '')})"
    for cs in st.get("containerStatuses") or []:
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            term = state.get("terminated")
            if term and term.get("exitCode", 0) != 0:
                return (
                    f"pod {name} container {cs.get('name')} exited with code "
                    f"{term.get('exitCode')} ({term.get('reason') or 'Error'})"
                )
    return None


def pod_ready(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    return st.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []
    )


def progress_numbers(cm: dict[str, Any] | None) -> dict[str, Any]:
    data = (cm or {}).get("data") or {}
    out: dict[str, Any] = {}
    for key in ("step", "weightVersion", "lastCheckpointStep"):
        raw = data.get(key)
        if raw not in (None, ""):
            with contextlib.suppress(ValueError):
                out[key] = int(raw)
    out["done"] = str(data.get("done", "")).lower() == "true"
    return out


def needs_write(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    return live is None or _annotation(live, HASH_ANNOTATION) != _annotation(
        desired, HASH_ANNOTATION
    )


# ---------------------------------------------------------------------------- reconcile


class _Pass:
    """State of one reconcile pass: the snapshot plus the plan being built."""

    def __init__(self, obs: Observed):
        self.obs = obs
        self.job = obs.job
        self.ref = job_ref(obs.job)
        self.generation = obs.job.get("metadata", {}).get("generation")
        self.old_status = copy.deepcopy(obs.job.get("status") or {})
        self.st = copy.deepcopy(self.old_status)
        self.st.setdefault("conditions", [])
        self.plan = Plan(step="")
        self.spec: api.RLPostTrainJobSpec | None = None
        self.queue: str | None = None
        self.wl = obs.workload
        self.n = b.names(self.ref.name)
        self.by_kind_name = {
            (c.get("kind"), c["metadata"]["name"]): c for c in obs.children if c.get("metadata")
        }

    # ---- small tools
    def act(self, verb: str, kind: str, name: str, body=None, why: str = "") -> None:
        self.plan.actions.append(Action(verb, kind, name, body, why))

    def condition(self, ctype: str, status: bool, reason: str, message: str) -> None:
        set_condition(
            self.st["conditions"], ctype, status, reason, message, self.obs.now, self.generation
        )

    def drop_condition(self, ctype: str) -> None:
        self.st["conditions"] = [c for c in self.st["conditions"] if c["type"] != ctype]

    def phase(self, phase: api.Phase, reason: str, message: str, warning: bool = False) -> None:
        if self.old_status.get("phase") != phase.value:
            self.plan.events.append(("Warning" if warning else "Normal", reason, message))
        self.st["phase"] = phase.value

    def live(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.by_kind_name.get((kind, name))

    def compute_objects(self) -> list[dict[str, Any]]:
        return [
            c
            for c in self.obs.children
            if c.get("kind") in COMPUTE_KINDS
            and _label(c, ROLE_LABEL) in COMPUTE_ROLES
            and (c["kind"] != "Pod" or _label(c, ROLE_LABEL) == ROLE_BUFFER)
        ]

    def compute_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.obs.pods if _label(p, ROLE_LABEL) in COMPUTE_ROLES]

    def stop_gang(self, why: str) -> bool:
        """Delete the compute children; True once no pod of the gang is left."""
        for obj in self.compute_objects():
            if not deleting(obj):
                self.act("delete", obj["kind"], obj["metadata"]["name"], why=why)
        return not self.compute_pods()

    def ensure(self, desired: dict[str, Any], why: str) -> None:
        name = desired["metadata"]["name"]
        live = self.live(desired["kind"], name)
        if live is not None and deleting(live):
            return  # wait for it to go; the next pass creates it again
        if not needs_write(desired, live):
            return
        if desired["kind"] == "Pod" and live is not None:
            self.act("delete", "Pod", name, why=f"{why}: pod spec changed")
            return
        self.act("apply", desired["kind"], name, desired, why)

    def ensure_once(self, desired: dict[str, Any], why: str) -> None:
        if self.live(desired["kind"], desired["metadata"]["name"]) is None:
            self.act("create", desired["kind"], desired["metadata"]["name"], desired, why)

    def finish(self) -> Plan:
        for key in [k for k, v in self.st.items() if v is None]:
            del self.st[key]
        if self.generation is not None:
            self.st["observedGeneration"] = self.generation
        self.plan.status = self.st
        self.plan.status_changed = _normal(self.st) != _normal(self.old_status)
        return self.plan

    # ---- steps
    def validate(self) -> bool:
        errors: list[str] = list(validation.name_errors(self.ref.name))
        try:
            self.spec = api.RLPostTrainJobSpec.model_validate(self.job.get("spec") or {})
        except ValidationError as exc:
            for e in exc.errors():
                loc = ".".join(str(x) for x in e["loc"])
                errors.append(f"spec.{loc}: {e['msg']}")
        if self.spec is not None:
            errors += api.semantic_errors(self.spec)
            ns = self.ref.namespace
            if self.spec.queue_name:
                self.queue = self.spec.queue_name
            elif self.obs.default_queue_exists:
                self.queue = "default"
            else:
                errors.append(
                    f"spec.queueName is not set and namespace {ns} has no LocalQueue named "
                    f"'default': set spec.queueName to a LocalQueue of {ns} "
                    f"(kubectl get localqueues -n {ns})"
                )
            if self.spec.priority_class_name and not self.obs.priority_class_exists:
                errors.append(
                    f"spec.priorityClassName: WorkloadPriorityClass "
                    f"'{self.spec.priority_class_name}' does not exist "
                    "(kubectl get workloadpriorityclasses)"
                )
            if self.before_admission():
                errors += validation.pre_admission_errors(
                    self.ref, self.spec, self.spec.wire(), self.obs.capacity
                )
            errors += self.workload_refused()
        if not errors:
            self.drop_condition("InvalidSpec")
            return True
        self.plan.step = "validate"
        message = "; ".join(errors)
        self.condition("InvalidSpec", True, "InvalidSpec", message)
        self.phase(api.Phase.INVALID, "InvalidSpec", message, warning=True)
        if (
            self.old_status.get("phase") == api.Phase.INVALID.value
            and _cond_msg(self.old_status, "InvalidSpec") != message
        ):
            self.plan.events.append(("Warning", "InvalidSpec", message))
        self.plan.requeue_after = 30.0 if not self.queue else None
        self.drop_unadmitted_workload()
        return False

    def before_admission(self) -> bool:
        """Nothing of the job runs or holds quota yet: pre-admission checks apply."""
        if self.old_status.get("phase") in (*WAS_ADMITTED, *FINISHED_PHASES):
            return False
        return self.wl is None or not has_quota_reservation(self.wl)

    def workload_refused(self) -> list[str]:
        """Kueue's webhooks (or the API server) refused the Workload: the spec is the cause."""
        name = self.n["workload"]
        errors = [
            e
            for e in self.obs.child_errors
            if e.kind == "Workload" and e.name == name and not e.retryable and self.wl is None
        ]
        if errors and self.spec is not None and self.queue is not None:
            desired = b.build_workload(self.ref, self.spec, self.queue, self.obs.priority)
            now = _annotation(desired, HASH_ANNOTATION)
            errors = [e for e in errors if not e.spec_hash or e.spec_hash == now]
        return [f"Kueue refused the job's Workload: {e.describe()}" for e in errors]

    def drop_unadmitted_workload(self) -> None:
        """An invalid job's Workload that holds no quota and runs no pod goes (Kueue would
        otherwise admit it and hold GPUs for a job that cannot start)."""
        wl = self.wl
        if wl is None or deleting(wl) or has_quota_reservation(wl) or self.compute_pods():
            return
        if RESOURCE_IN_USE_FINALIZER in (wl["metadata"].get("finalizers") or []):
            self._drop_finalizer(wl, "invalid spec: the Workload goes")
        self.act("delete", "Workload", wl["metadata"]["name"], why="invalid spec")

    def finished(self) -> bool:
        if self.st.get("phase") not in FINISHED_PHASES:
            return False
        self.plan.step = "finished"
        succeeded = self.st["phase"] == api.Phase.SUCCEEDED.value
        gone = self.stop_gang("job finished")
        wl = self.wl
        if wl is not None and gone:
            if not is_true(wl, "Finished"):
                conds = copy.deepcopy((wl.get("status") or {}).get("conditions") or [])
                message = _cond_msg(self.st, "Succeeded" if succeeded else "Failed") or ""
                set_condition(
                    conds,
                    "Finished",
                    True,
                    "Succeeded" if succeeded else "Failed",
                    message or ("training finished" if succeeded else "job failed"),
                    self.obs.now,
                    wl["metadata"].get("generation"),
                )
                self.act(
                    "patch_status",
                    "Workload",
                    wl["metadata"]["name"],
                    {
                        "metadata": {"resourceVersion": wl["metadata"]["resourceVersion"]},
                        "status": {"conditions": conds},
                    },
                    why="mark the Workload Finished",
                )
            elif RESOURCE_IN_USE_FINALIZER in (wl["metadata"].get("finalizers") or []):
                self._drop_finalizer(wl, "Workload finished")
        ttl = self.spec.ttl_seconds_after_finished if self.spec else None
        failed = cond({"status": self.st}, "Failed") or {}
        if failed.get("status") == "True" and failed.get("reason") == CHILD_REJECTED:
            ttl = 0  # half-created: nothing of it is kept
        done_at = parse_ts(self.st.get("completionTime"))
        if ttl is not None and done_at is not None:
            left = (done_at - self.obs.now).total_seconds() + ttl
            if left <= 0:
                for c in self.obs.children:
                    if c.get("kind") == "Workload" or deleting(c):
                        continue
                    if c.get("kind") == "Pod" and _label(c, ROLE_LABEL) != ROLE_BUFFER:
                        continue
                    if c.get("kind") == "PersistentVolumeClaim":
                        continue  # the final checkpoint: it goes with the job (owner reference)
                    self.act("delete", c["kind"], c["metadata"]["name"], why="ttl after finished")
            else:
                self.plan.requeue_after = left
        return True

    def _drop_finalizer(self, wl: dict[str, Any], why: str) -> None:
        fins = [f for f in wl["metadata"].get("finalizers") or [] if f != RESOURCE_IN_USE_FINALIZER]
        self.act(
            "patch",
            "Workload",
            wl["metadata"]["name"],
            {
                "metadata": {
                    "finalizers": fins,
                    "resourceVersion": wl["metadata"]["resourceVersion"],
                }
            },
            why=why,
        )

    def ensure_workload(self) -> bool:
        assert self.spec is not None and self.queue is not None
        desired = b.build_workload(self.ref, self.spec, self.queue, self.obs.priority)
        if _label(self.job, QUEUE_LABEL) != self.queue:
            self.act(
                "apply",
                self.job.get("kind", api.KIND),
                self.ref.name,
                b.job_queue_label(self.ref, self.queue),
                why="Kueue queue-name label",
            )
        wl = self.wl
        self.st["workloadName"] = desired["metadata"]["name"]
        if wl is None:
            self.plan.step = "ensure_workload"
            self.stop_gang("no Workload")
            self.act("create", "Workload", desired["metadata"]["name"], desired, "gang admission")
            self.condition(
                "Queued",
                True,
                "WorkloadCreated",
                f"Workload {desired['metadata']['name']} created in LocalQueue {self.queue}; "
                "waiting for Kueue",
            )
            if self.st.get("phase") not in WAS_ADMITTED:
                self.phase(api.Phase.QUEUED, "Queued", f"waiting for Kueue in queue {self.queue}")
            return True
        if deleting(wl):
            self.plan.step = "ensure_workload"
            if self.stop_gang("Workload deleted") and RESOURCE_IN_USE_FINALIZER in (
                wl["metadata"].get("finalizers") or []
            ):
                self._drop_finalizer(wl, "Workload deleted and the gang is gone")
            return True
        if _annotation(wl, HASH_ANNOTATION) != _annotation(desired, HASH_ANNOTATION) and not (
            is_true(wl, "Finished")
        ):
            self.plan.step = "ensure_workload"
            if self.stop_gang("spec changed: new Workload"):
                self.act("delete", "Workload", wl["metadata"]["name"], why="podSets changed")
            self.plan.events.append(
                ("Normal", "WorkloadReplaced", "pod groups changed: the job is queued again")
            )
            msg = "pod groups changed: stopping the gang, then the job is queued again"
            self.condition("Running", False, "WorkloadReplaced", msg)
            self.st["admission"] = None
            self.st["readyPods"] = None
            self.phase(api.Phase.QUEUED, "Queued", msg)
            return True
        active = (wl.get("spec") or {}).get("active", True)
        backoff_left = self.backoff_left()
        want = not self.spec.suspend and backoff_left is None
        if backoff_left is not None:
            self.plan.requeue_after = backoff_left
        elif self.st.get("requeueAt") and active:
            self.st["requeueAt"] = None  # the backoff is over and the Workload active again
        if active is not want:
            why = "spec.suspend" if self.spec.suspend else "pods-ready backoff"
            self.act(
                "patch", "Workload", wl["metadata"]["name"], {"spec": {"active": want}}, why=why
            )
            if not want:
                self.wl = wl = copy.deepcopy(wl)
                wl.setdefault("spec", {})["active"] = False
        return False

    def backoff_left(self) -> float | None:
        """Seconds until a gang that timed out waiting for Ready pods is queued again."""
        at = parse_ts(self.st.get("requeueAt"))
        if at is None:
            return None
        left = (at - self.obs.now).total_seconds()
        return left if left > 0 else None

    def progress(self) -> bool:
        cm = self.live("ConfigMap", self.n["progress"])
        nums = progress_numbers(cm)
        for key in ("step", "weightVersion", "lastCheckpointStep"):
            if key in nums:
                self.st[key] = nums[key]
        if not nums["done"]:
            return False
        self.plan.step = "progress"
        msg = f"trained {self.st.get('step', '?')} steps"
        self.condition("Succeeded", True, "TrainingDone", msg)
        self.condition("Running", False, "Finished", msg)
        self.st["completionTime"] = self.st.get("completionTime") or ts(self.obs.now)
        self.phase(api.Phase.SUCCEEDED, "Succeeded", msg)
        self.stop_gang("job succeeded")
        return True

    def not_admitted(self) -> bool:
        assert self.spec is not None and self.wl is not None
        wl = self.wl
        evicted = cond(wl, "Evicted")
        evicted_now = bool(evicted and evicted.get("status") == "True")
        admitted = is_true(wl, "Admitted") and not evicted_now
        # Deactivated by this operator (pods-ready backoff) and not yet evicted by Kueue:
        # the gang must not start again.
        active = (wl.get("spec") or {}).get("active", True)
        if admitted and not self.spec.suspend and active:
            return False
        self.plan.step = "not_admitted"
        gone = self.stop_gang("not admitted")
        was = self.old_status.get("phase")
        if evicted_now and gone and has_quota_reservation(wl):
            self._clear_reservation(wl, evicted)
        qr = cond(wl, "QuotaReserved")
        if evicted_now:
            reason, message = evicted.get("reason", "Evicted"), evicted.get("message", "")
        elif self.spec.suspend:
            reason, message = "SuspendedByUser", "spec.suspend is true"
        else:
            reason, message = "Pending", ""
        timed_out = _cond_reason(self.old_status, "Suspended", True) == PODS_READY_TIMEOUT and bool(
            self.st.get("requeueAt") or not (wl.get("spec") or {}).get("active", True)
        )
        if self.spec.suspend or evicted_now or was in WAS_ADMITTED:
            if self.spec.suspend and not evicted_now:
                reason, message = "SuspendedByUser", "spec.suspend is true"
            sus_msg = message or "waiting to be admitted again"
            if timed_out and not self.spec.suspend:
                reason = PODS_READY_TIMEOUT
                sus_msg = _cond_msg(self.old_status, "Suspended") or ""
            elif not self.spec.suspend:
                sus_msg = f"{sus_msg}; resumes from step {self.st.get('lastCheckpointStep', 0)}"
                sus_msg += " when Kueue admits it again"
            self.condition("Suspended", True, reason, sus_msg)
            if was in (api.Phase.RUNNING.value, api.Phase.ADMITTED.value) and (
                evicted_now or self.spec.suspend
            ):
                self.plan.evicted = True
            self.phase(
                api.Phase.SUSPENDED,
                reason,
                sus_msg,
                warning=reason in ("Preempted", PODS_READY_TIMEOUT),
            )
        else:
            self.phase(api.Phase.QUEUED, "Queued", f"waiting for Kueue in queue {self.queue}")
        if qr and qr.get("status") == "True" and not evicted_now and not self.spec.suspend:
            cq = ((wl.get("status") or {}).get("admission") or {}).get("clusterQueue")
            self.condition(
                "Queued",
                True,
                "QuotaReserved",
                f"quota reserved in ClusterQueue {cq}; waiting for the Workload's admission checks",
            )
        elif qr and qr.get("status") == "False":
            self.condition("Queued", True, qr.get("reason", "Pending"), qr.get("message", ""))
        elif evicted_now:
            self.condition("Queued", False, "Evicted", "stopping the gang before re-queueing")
        elif not qr:
            self.condition(
                "Queued",
                True,
                "Pending",
                f"Workload {wl['metadata']['name']} waits for Kueue in queue {self.queue}",
            )
        self.condition("Admitted", False, reason if evicted_now else "NotAdmitted", message)
        self.condition("Running", False, "NotAdmitted", "the gang is stopped")
        self.st["readyPods"] = None
        self.st["admission"] = None
        return True

    def _clear_reservation(self, wl: dict[str, Any], evicted: dict[str, Any]) -> None:
        """Kueue's protocol (jobframework reconciler, step 'handle eviction'): once the job
        is no longer active, unset the quota reservation and set Requeued (True only for
        preemption / node failures; deactivation requeues on reactivation)."""
        conds = copy.deepcopy((wl.get("status") or {}).get("conditions") or [])
        gen = wl["metadata"].get("generation")
        requeue = evicted.get("reason") in ("Preempted", "NodeFailures")
        now = self.obs.now
        msg = evicted.get("message", "")
        set_condition(conds, "Requeued", requeue, evicted.get("reason", "Evicted"), msg, now, gen)
        set_condition(conds, "QuotaReserved", False, "Pending", msg, now, gen)
        set_condition(
            conds, "Admitted", False, "NoReservation", "The workload has no reservation", now, gen
        )
        self.act(
            "patch_status",
            "Workload",
            wl["metadata"]["name"],
            {
                "metadata": {"resourceVersion": wl["metadata"]["resourceVersion"]},
                "status": {"conditions": conds, "admission": None},
            },
            why=f"clear quota reservation after eviction ({evicted.get('reason')})",
        )

    def failures(self) -> bool:
        assert self.spec is not None
        attempt = str(self.st.get("restarts") or 0)
        if self.spec_failure(attempt):
            return True
        failed = [
            why
            for p in [*self.compute_pods(), *self.obs.failed_pods]
            if _label(p, ROLE_LABEL) in TRAINING_ROLES
            and _label(p, ATTEMPT_LABEL) == attempt
            and (why := pod_failure(p))
        ]
        if not failed:
            return False
        self.plan.step = "failures"
        restarts = self.st.get("restarts") or 0
        limit = self.spec.failure_policy.max_restarts
        if restarts >= limit:
            msg = (
                f"{failed[0]}; restarted {restarts} times, failurePolicy.maxRestarts is {limit}: "
                "check the trainer logs (kubectl logs) and raise maxRestarts or fix the cause"
            )
            self.condition("Failed", True, "MaxRestartsExceeded", msg)
            self.condition("Running", False, "Failed", msg)
            self.st["completionTime"] = ts(self.obs.now)
            self.phase(api.Phase.FAILED, "Failed", msg, warning=True)
            self.stop_gang("job failed")
            return True
        self.st["restarts"] = restarts + 1
        self.st["roleRestarts"] = None  # counts the new gang's pods
        resume = self.st.get("lastCheckpointStep")
        msg = (
            f"{failed[0]}; restarting the gang from checkpoint step {resume or 0} "
            f"(restart {restarts + 1} of {limit})"
        )
        self.plan.restarted = True
        self.condition("Running", False, "Restarting", msg)
        self.phase(api.Phase.RESTARTING, "Restarting", msg, warning=True)
        self.stop_gang("restart after a failure")
        return True

    def replace_failed_buffer(self) -> None:
        """The buffer is a bare Pod: no controller replaces it when it ends up Failed
        (evicted, node lost). Delete it; the next pass creates it again, and its state
        volume (the samples it accepted) is kept."""
        pod = self.live("Pod", self.n["buffer"])
        if pod is None or deleting(pod):
            return
        phase = (pod.get("status") or {}).get("phase")
        if phase not in ("Failed", "Succeeded"):
            return
        why = pod_failure(pod) or f"pod {self.n['buffer']} is {phase}"
        self.act("delete", "Pod", self.n["buffer"], why="buffer pod ended: recreate it")
        self.plan.events.append(
            ("Warning", "BufferRecreated", f"{why}; recreating it (its state volume is kept)")
        )

    def role_restarts(self, attempt: int) -> None:
        """Engine, router and buffer pods restart without stopping the gang (their
        Deployment or the kubelet restarts them; the operator recreates a Failed buffer
        pod): count them per role in status.roleRestarts, one Warning Event per increase."""
        counts: dict[str, int] = {}
        why: dict[str, str] = {}
        for p in [*self.compute_pods(), *self.obs.failed_pods]:
            role = _label(p, ROLE_LABEL)
            if role not in SERVING_ROLES or _label(p, ATTEMPT_LABEL) != str(attempt):
                continue
            st = p.get("status") or {}
            n = sum(int(cs.get("restartCount") or 0) for cs in st.get("containerStatuses") or [])
            n += st.get("phase") == "Failed"  # the pod itself is replaced
            counts[role] = counts.get(role, 0) + n
            if n and (reason := pod_failure(p)):
                why[role] = reason
        old = self.old_status.get("roleRestarts") or {}
        new = {r: max(int(old.get(r, 0)), counts.get(r, 0)) for r in sorted({*old, *counts})}
        new = {r: n for r, n in new.items() if n}
        if not new:
            return
        self.st["roleRestarts"] = new
        for role, n in new.items():
            if n > int(old.get(role, 0)):
                owner = "the operator" if role == ROLE_BUFFER else "its Deployment"
                self.plan.events.append(
                    (
                        "Warning",
                        "RoleRestarted",
                        f"{why.get(role, f'a {role} pod restarted')}; restarted by the kubelet "
                        f"or replaced by {owner}, training goes on ({role} restarts: {n})",
                    )
                )

    def spec_failure(self, attempt: str) -> bool:
        """A role that exited with INVALID_SPEC_EXIT_CODE found the spec unusable at start (a
        custom function that does not import): Failed at once, restarts would not heal it."""
        for p in [*self.compute_pods(), *self.obs.failed_pods]:
            if _label(p, ATTEMPT_LABEL) != attempt:
                continue
            why = invalid_spec_exit(p)
            if why is None:
                continue
            self.plan.step = "failures"
            self.condition("InvalidSpec", True, "InvalidSpec", why)
            self.fail(CHILD_INVALID_SPEC, why)
            return True
        return False

    def fail(self, reason: str, msg: str) -> None:
        self.condition("Failed", True, reason, msg)
        self.condition("Running", False, "Failed", msg)
        self.st["completionTime"] = self.st.get("completionTime") or ts(self.obs.now)
        self.st["readyPods"] = None
        self.phase(api.Phase.FAILED, reason, msg, warning=True)
        self.stop_gang("job failed")

    def child_errors(self, desired: list[dict[str, Any]]) -> tuple[list[ChildError], list]:
        """The refusals of the API server that still apply to what this pass would write."""
        want = {
            (o["kind"], o["metadata"]["name"]): _annotation(o, HASH_ANNOTATION) for o in desired
        }
        fatal, transient = [], []
        for e in self.obs.child_errors:
            key = (e.kind, e.name)
            if key not in want or (e.spec_hash and want[key] and e.spec_hash != want[key]):
                continue
            (transient if e.retryable else fatal).append(e)
        return fatal, transient

    def unschedulable(self, attempt: int) -> str | None:
        """The scheduler's reason for the first pod of the gang it cannot place."""
        for p in sorted(self.compute_pods(), key=lambda p: p["metadata"]["name"]):
            if _label(p, ATTEMPT_LABEL) != str(attempt) or deleting(p):
                continue
            sched = cond(p, "PodScheduled")
            if sched and sched.get("status") == "False" and sched.get("reason") == "Unschedulable":
                return (
                    f"pod {p['metadata']['name']} cannot be scheduled: {sched.get('message', '')}"
                )
        return None

    def was_ready_since(self, started: datetime) -> bool:
        """The gang of this attempt was all Ready once (the start timeout no longer applies;
        a pod lost later is a failure or an eviction, not a start that never happened)."""
        running = cond({"status": self.old_status}, "Running")
        if not running:
            return False
        if running.get("status") == "True":
            return True
        flipped = parse_ts(running.get("lastTransitionTime"))
        return flipped is not None and flipped > started

    def gang_started(self, attempt: int) -> datetime | None:
        times = [
            parse_ts(o["metadata"].get("creationTimestamp"))
            for o in self.compute_objects()
            if _label(o, ATTEMPT_LABEL) == str(attempt) and not deleting(o)
        ]
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def pods_ready_timeout(self, wl: dict[str, Any], why: str) -> None:
        """Kueue's waitForPodsReady, per job: give the quota back (deactivate the Workload,
        requeue after a backoff), or Fail past failurePolicy.podsReadyRequeueLimit."""
        assert self.spec is not None
        fp = self.spec.failure_policy
        count = int(self.st.get("podsReadyRequeues") or 0)
        base = (
            f"the gang's pods were not all Ready {fp.pods_ready_timeout_seconds} s after it "
            f"started ({self.st.get('readyPods')} Ready); {why}"
        )
        self.plan.step = "pods_ready_timeout"
        if count >= fp.pods_ready_requeue_limit:
            self.fail(
                PODS_READY_TIMEOUT,
                f"{base}; requeued {count} times, failurePolicy.podsReadyRequeueLimit is "
                f"{fp.pods_ready_requeue_limit}",
            )
            return
        delay = min(REQUEUE_BACKOFF_S * 2**count, REQUEUE_BACKOFF_MAX_S)
        at = self.obs.now + timedelta(seconds=delay)
        self.st["podsReadyRequeues"] = count + 1
        self.st["requeueAt"] = ts(at)
        msg = (
            f"{base}; quota given back, queued again at {ts(at)} "
            f"(requeue {count + 1} of {fp.pods_ready_requeue_limit})"
        )
        self.act(
            "patch", "Workload", wl["metadata"]["name"], {"spec": {"active": False}}, why=msg[:80]
        )
        self.stop_gang("pods not ready in time")
        self.condition("Suspended", True, PODS_READY_TIMEOUT, msg)
        self.condition("Running", False, PODS_READY_TIMEOUT, msg)
        self.st["readyPods"] = None
        self.st["admission"] = None
        self.plan.evicted = True
        self.plan.requeue_after = delay
        self.phase(api.Phase.SUSPENDED, PODS_READY_TIMEOUT, msg, warning=True)

    def workload_pods_ready(self, wl: dict[str, Any], ready: bool, message: str) -> None:
        """The Workload's PodsReady condition, as Kueue's jobframework keeps it (what Kueue's
        own waitForPodsReady reads). Written only when its status flips."""
        current = cond(wl, "PodsReady")
        value = "True" if ready else "False"
        if current is not None and current.get("status") == value:
            return
        conds = copy.deepcopy((wl.get("status") or {}).get("conditions") or [])
        reason = "PodsReady" if ready else "WaitForStart"
        set_condition(
            conds,
            "PodsReady",
            ready,
            reason,
            message,
            self.obs.now,
            wl["metadata"].get("generation"),
        )
        self.act(
            "patch_status",
            "Workload",
            wl["metadata"]["name"],
            {
                "metadata": {"resourceVersion": wl["metadata"]["resourceVersion"]},
                "status": {"conditions": conds},
            },
            why=f"PodsReady {value}",
        )

    def start(self) -> Plan:
        assert self.spec is not None and self.wl is not None
        self.plan.step = "start"
        wl = self.wl
        attempt = int(self.st.get("restarts") or 0)
        # A previous attempt (or a spec that changed under running pods) goes first.
        stale = [
            o
            for o in [*self.compute_objects(), *self.compute_pods()]
            if _label(o, ATTEMPT_LABEL) not in (None, str(attempt))
        ]
        if stale:
            for o in self.compute_objects():
                if o in stale and not deleting(o):
                    self.act("delete", o["kind"], o["metadata"]["name"], why="old attempt")
            self.condition("Running", False, "Restarting", "waiting for the old pods to go")
            return self.finish()
        missing = b.missing_flavors(wl, self.obs.flavors)
        if missing:
            self.plan.requeue_after = 2.0
            self.condition("Admitted", False, "FlavorNotFound", f"ResourceFlavors {missing}")
            return self.finish()
        # The resume step is fixed when the gang starts: from the running gang, else the
        # last checkpoint the trainer reported.
        sts = self.live("StatefulSet", self.n["trainer"]) or self.live(
            "StatefulSet", self.n["worker"]
        )
        if sts is not None and not deleting(sts):
            raw = _annotation(sts, RESUME_ANNOTATION)
            resume = int(raw) if raw else None
        else:
            resume = self.st.get("lastCheckpointStep")
        self.st["resumeStep"] = resume
        start = b.StartInfo(
            updates=b.podset_updates(wl, self.obs.flavors), resume_step=resume, attempt=attempt
        )
        wire = api.RLPostTrainJobSpec.model_validate(self.job["spec"]).wire()
        static = b.build_static_children(self.ref, self.spec, wire)
        config = b.build_config_map(self.ref, wire, resume)
        progress = b.build_progress_config_map(self.ref)
        compute = b.build_compute_children(self.ref, self.spec, start)
        fatal, transient = self.child_errors([*static, config, progress, *compute])
        if fatal:
            # Retrying cannot help: say why, remove what was made, give the quota back.
            self.plan.step = "child_rejected"
            self.fail(CHILD_REJECTED, f"{fatal[0].describe()}; fix the spec and submit it again")
            return self.finish()
        if transient:
            self.condition("ChildrenApplied", False, "Retrying", transient[0].describe())
        elif any(c["type"] == "ChildrenApplied" for c in self.st["conditions"]):
            self.condition("ChildrenApplied", True, "Applied", "every child is applied")
        for obj in static:
            self.ensure(obj, "static child")
        self.ensure(config, "job config")
        self.ensure_once(progress, "progress ConfigMap")
        self.ensure_once(b.build_token_secret(self.ref, secrets.token_urlsafe(32)), "job token")
        state_pvc = b.build_state_pvc(self.ref, self.spec)
        if state_pvc is not None:  # kept across restarts and suspensions; goes with the job
            self.ensure_once(state_pvc, "state volume")
        self.replace_failed_buffer()
        for obj in compute:
            self.ensure(obj, "gang")
        self.role_restarts(attempt)

        admission = (wl.get("status") or {}).get("admission") or {}
        flavors = {
            psa["name"]: psa["flavors"].get(GPU) or sorted(set(psa["flavors"].values()))[0]
            for psa in admission.get("podSetAssignments") or []
            if psa.get("flavors")
        }
        self.st["admission"] = {"clusterQueue": admission.get("clusterQueue"), "flavors": flavors}
        self.st["startTime"] = self.st.get("startTime") or ts(self.obs.now)
        cq = admission.get("clusterQueue")
        flv = ", ".join(f"{k}: {v}" for k, v in sorted(flavors.items()))
        self.condition("Queued", False, "Admitted", f"admitted by ClusterQueue {cq}")
        self.condition("Admitted", True, "Admitted", f"ClusterQueue {cq}; flavors {flv}")
        if any(c["type"] == "Suspended" for c in self.st["conditions"]):
            self.condition("Suspended", False, "Admitted", "admitted")
        if self.old_status.get("phase") not in WAS_ADMITTED or self.old_status.get("phase") in (
            api.Phase.SUSPENDED.value,
        ):
            self.plan.admission_wait = _admission_wait(wl, self.obs.now)
        expected = b.expected_pods(self.spec)
        ready = sum(
            1
            for p in self.compute_pods()
            if pod_ready(p) and _label(p, ATTEMPT_LABEL) == str(attempt) and not deleting(p)
        )
        self.st["readyPods"] = f"{ready}/{expected}"
        if ready >= expected:
            self.condition("Running", True, "AllPodsReady", f"{ready}/{expected} pods Ready")
            self.phase(api.Phase.RUNNING, "Running", f"all {expected} pods Ready")
            self.workload_pods_ready(wl, True, f"{ready}/{expected} pods Ready")
            return self.finish()
        why = self.unschedulable(attempt)
        started = self.gang_started(attempt)
        limit = self.spec.failure_policy.pods_ready_timeout_seconds
        if started is not None and not self.was_ready_since(started):
            waited = (self.obs.now - started).total_seconds()
            if waited >= limit:
                self.pods_ready_timeout(wl, why or "no pod reports why")
                return self.finish()
            self.plan.requeue_after = max(limit - waited, 1.0)
        if why:
            msg = f"{ready}/{expected} pods Ready; {why}"
            if _cond_reason(self.old_status, "Running") != "Unschedulable":
                self.plan.events.append(("Warning", "Unschedulable", msg))
            self.condition("Running", False, "Unschedulable", msg)
        else:
            self.condition("Running", False, "PodsNotReady", f"{ready}/{expected} pods Ready")
        self.phase(api.Phase.ADMITTED, "Admitted", f"ClusterQueue {cq}; flavors {flv}")
        if is_true(wl, "PodsReady"):
            self.workload_pods_ready(wl, False, f"{ready}/{expected} pods Ready")
        return self.finish()


def _admission_wait(wl: dict[str, Any], now: datetime) -> float | None:
    since = parse_ts(wl["metadata"].get("creationTimestamp"))
    req = cond(wl, "Requeued")
    if req and req.get("lastTransitionTime"):
        since = max(since or now, parse_ts(req["lastTransitionTime"]) or now)
    return (now - since).total_seconds() if since else None


def _cond_reason(status: dict[str, Any], ctype: str, true_only: bool = False) -> str | None:
    for c in status.get("conditions") or []:
        if c["type"] == ctype and (not true_only or c.get("status") == "True"):
            return c.get("reason")
    return None


def invalid_spec_exit(pod: dict[str, Any]) -> str | None:
    """A container that exited with validation.INVALID_SPEC_EXIT_CODE: its termination
    message says what in the spec is wrong."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            term = state.get("terminated")
            if term and term.get("exitCode") == validation.INVALID_SPEC_EXIT_CODE:
                msg = " ".join((term.get("message") or "").split())[:900]
                return (
                    f"pod {pod['metadata']['name']} ({_label(pod, ROLE_LABEL)}) refused the spec "
                    f"at start: {msg or 'exit code ' + str(validation.INVALID_SPEC_EXIT_CODE)}"
                )
    return None


def _cond_msg(status: dict[str, Any], ctype: str) -> str | None:
    for c in status.get("conditions") or []:
        if c["type"] == ctype:
            return c.get("message")
    return None


def _normal(status: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in status.items() if v not in (None, [], {})}
    if "conditions" in out:
        out["conditions"] = sorted(out["conditions"], key=lambda c: c["type"])
    return out


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
    """A Workload whose job is gone (GC deletes it): drop the finalizer so it can go."""
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
