"""Steps of a gang that has started but is not all Ready yet: what it waits for (a claim
to bind, the scheduler), whether it was Ready once, the pods-ready timeout (Kueue's
waitForPodsReady, per job) and the Workload's PodsReady condition."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

from rlpost import api

from ..constants import ATTEMPT_LABEL
from .base import PassBase
from .facts import (
    _label,
    cond,
    deleting,
    mounts_claim,
    parse_ts,
    set_condition,
    ts,
    unbound_immediate_claim,
)
from .model import PODS_READY_TIMEOUT, REQUEUE_BACKOFF_MAX_S, REQUEUE_BACKOFF_S


class ReadinessSteps(PassBase):
    def claim_to_bind(self) -> str | None:
        """The job's own state PVC while the PV controller has yet to bind it on its own
        (Immediate binding, or static PVs without a class). The pods that mount it are
        created once it is bound: made earlier, the scheduler fails each of them until then
        (a pod status write and a FailedScheduling Event every try). A WaitForFirstConsumer
        claim binds only when such a pod is scheduled, so it is never waited for."""
        pvc = self.live("PersistentVolumeClaim", self.n["state"])
        return self.n["state"] if unbound_immediate_claim(pvc, self.obs.binding_modes) else None

    def held_for_claim(self, pod: dict[str, Any], claim: str | None) -> bool:
        """A pod of the gang not created yet because the claim it mounts is not bound."""
        return (
            claim is not None
            and mounts_claim(pod, claim)
            and self.live("Pod", pod["metadata"]["name"]) is None
        )

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
        self.patch_workload_status(wl, {"conditions": conds}, why=f"PodsReady {value}")
