"""Steps of the job's lifecycle around Kueue admission: validate, finished, ensure_workload,
progress, not_admitted (evicted / suspended / waiting, clearing the quota reservation)."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from rlpost import api

from .. import builders as b
from .. import validation
from ..constants import (
    HASH_ANNOTATION,
    QUEUE_LABEL,
    RESOURCE_IN_USE_FINALIZER,
    ROLE_BUFFER,
    ROLE_LABEL,
)
from .base import PassBase
from .facts import (
    _annotation,
    _cond_msg,
    _cond_reason,
    _label,
    cond,
    deleting,
    has_quota_reservation,
    is_true,
    parse_ts,
    progress_numbers,
    set_condition,
    ts,
)
from .model import (
    CHILD_INVALID_SPEC,
    CHILD_REJECTED,
    FINISHED_PHASES,
    PODS_READY_TIMEOUT,
    WAS_ADMITTED,
)


class AdmissionSteps(PassBase):
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
            failed = cond({"status": self.st}, "Failed") or {}
            if not (failed.get("status") == "True" and failed.get("reason") == CHILD_INVALID_SPEC):
                # (a spec a role refused at start stays InvalidSpec: the job is Failed)
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
                self.patch_workload_status(
                    wl, {"conditions": conds}, why="mark the Workload Finished"
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
        """Workloads made by an operator before 0.2 carry Kueue's resource-in-use finalizer
        (today's carry none: builders/kueue.py): dropped where it would have been."""
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
        if self.wl is None and not self.old_status.get("phase"):
            # A new job: its Workload first and alone (with the state volume), and the
            # next pass at once for the queue label, status and Event. Kueue sees a burst
            # of new jobs before the operator writes anything else for them.
            self.plan.step = "create_workload"
            self.act("create", "Workload", desired["metadata"]["name"], desired, "gang admission")
            state_pvc = b.build_state_pvc(self.ref, self.spec)
            if state_pvc is not None:
                self.ensure_once(state_pvc, "state volume")
            self.plan.requeue_after = 0.01
            return True
        if _label(self.job, QUEUE_LABEL) != self.queue:
            self.act(
                "patch",
                api.KIND,
                self.ref.name,
                b.job_queue_label(self.queue),
                why="Kueue queue-name label",
            )
        wl = self.wl
        self.st["workloadName"] = desired["metadata"]["name"]
        if wl is None:
            self.plan.step = "ensure_workload"
            self.stop_gang("no Workload")
            self.act("create", "Workload", desired["metadata"]["name"], desired, "gang admission")
            # The state volume comes first: provisioned (or bound to a static PV) while Kueue
            # admits, so the gang's pods do not wait on an unbound claim.
            state_pvc = b.build_state_pvc(self.ref, self.spec)
            if state_pvc is not None:
                self.ensure_once(state_pvc, "state volume")
            self.condition(
                "Queued",
                True,
                "WorkloadCreated",
                f"Workload {desired['metadata']['name']} created in LocalQueue {self.queue}; "
                "waiting for Kueue",
            )
            if self.st.get("phase") not in WAS_ADMITTED:
                self.phase(api.Phase.QUEUED, "Queued", f"waiting for Kueue in queue {self.queue}")
            else:
                self.gang_lost("the Workload is gone: a new one is queued")
            return True
        if deleting(wl):
            self.plan.step = "ensure_workload"
            if self.stop_gang("Workload deleted") and RESOURCE_IN_USE_FINALIZER in (
                wl["metadata"].get("finalizers") or []
            ):
                self._drop_finalizer(wl, "Workload deleted and the gang is gone")
            self.gang_lost("the Workload is being deleted: stopping the gang")
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

    def gang_lost(self, msg: str) -> None:
        """The quota went away under an admitted gang: never Running while it is deleted."""
        if self.st.get("phase") in (api.Phase.RUNNING.value, api.Phase.ADMITTED.value):
            self.phase(api.Phase.QUEUED, "Queued", msg)
        self.condition("Running", False, "WorkloadGone", msg)
        self.st["admission"] = None
        self.st["readyPods"] = None

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
        for key in ("step", "weightVersion", "lastCheckpointStep", "rewardMean"):
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
        self.patch_workload_status(
            wl,
            {"conditions": conds, "admission": None},
            why=f"clear quota reservation after eviction ({evicted.get('reason')})",
        )
