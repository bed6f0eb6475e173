"""Steps of the running gang: failures (gang restarts, serving-role restarts, a Failed
buffer pod), start (children, resume step, readiness; what the gang waits for and the
pods-ready timeout are in readiness.py)."""

from __future__ import annotations

import secrets
from typing import Any

from rlpost import api

from .. import builders as b
from ..constants import (
    ATTEMPT_LABEL,
    GPU,
    HASH_ANNOTATION,
    ROLE_BUFFER,
    ROLE_LABEL,
    TRAINING_ROLES,
)
from .facts import (
    _admission_wait,
    _annotation,
    _cond_reason,
    _label,
    deleting,
    invalid_spec_exit,
    is_true,
    pod_failure,
    pod_ready,
    ts,
    waits_on_volume_binding,
)
from .model import (
    CHILD_INVALID_SPEC,
    CHILD_REJECTED,
    SERVING_ROLES,
    WAS_ADMITTED,
    ChildError,
    Plan,
)
from .readiness import ReadinessSteps


class GangSteps(ReadinessSteps):
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

    def replace_ended_pods(self) -> None:
        """The gang's pods are the operator's own: no controller replaces one that ended up
        Failed or Succeeded (evicted, node lost; restartPolicy Always restarts containers,
        not pods). A serving pod (engine, router, buffer, pool) that ended is deleted and the
        next pass creates it again; the buffer's state volume (the samples it accepted) is
        kept. A training pod that failed restarts the gang instead (`failures`).
        One Event per reason and pass (the controller names a pass's Events by the job's
        version and the reason: a second PodRecreated of the same pass would be dropped as a
        duplicate), so pods that ended together (a lost node) share one."""
        ended: list[str] = []
        for pod in self.compute_pods():
            role = _label(pod, ROLE_LABEL)
            phase = (pod.get("status") or {}).get("phase")
            if role not in SERVING_ROLES or deleting(pod) or phase not in ("Failed", "Succeeded"):
                continue
            name = pod["metadata"]["name"]
            why = pod_failure(pod) or f"pod {name} is {phase}"
            self.act("delete", "Pod", name, why=f"{role} pod ended: recreate it")
            if role == ROLE_BUFFER:
                self.plan.events.append(
                    (
                        "Warning",
                        "BufferRecreated",
                        f"{why}; recreating it (its state volume is kept)",
                    )
                )
            else:
                ended.append(why)
        if ended:
            them = "it" if len(ended) == 1 else "them"
            self.plan.events.append(
                ("Warning", "PodRecreated", f"{'; '.join(ended)}; recreating {them}")
            )

    def role_restarts(self, attempt: int) -> bool:
        """Engine, router, buffer and pool pods restart without stopping the gang (the kubelet
        restarts their containers; the operator recreates a pod that ended): count
        them per role in status.roleRestarts, one Warning Event per increase.
        A role restarted more than failurePolicy.maxRestarts times fails the job with the
        pod's reason (True: the pass ends there)."""
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
            return False
        self.st["roleRestarts"] = new
        limit = self.spec.failure_policy.max_restarts
        over = [r for r, n in new.items() if n > limit]
        if over:
            role = over[0]
            msg = (
                f"{why.get(role, f'{role} pods keep failing')}; {role} restarted {new[role]} "
                f"times, failurePolicy.maxRestarts is {limit}: check the {role} logs "
                "(kubectl logs) and raise maxRestarts or fix the cause"
            )
            self.fail("MaxRestartsExceeded", msg)
            return True
        # One Event for every role that restarted in this pass (see replace_ended_pods).
        said = [
            f"{why.get(role, f'a {role} pod restarted')}; restarted by the kubelet "
            f"or replaced by the operator, training goes on ({role} restarts: {n})"
            for role, n in new.items()
            if n > int(old.get(role, 0))
        ]
        if said:
            self.plan.events.append(("Warning", "RoleRestarted", "; ".join(said)))

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

    def start(self) -> Plan:
        assert self.spec is not None and self.wl is not None
        self.plan.step = "start"
        wl = self.wl
        attempt = int(self.st.get("restarts") or 0)
        # A previous attempt (or a spec that changed under running pods) goes first.
        stale = [
            o
            for o in self.compute_objects()
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
        running = [
            p
            for p in self.compute_pods()
            if _label(p, ROLE_LABEL) in TRAINING_ROLES
            and _label(p, ATTEMPT_LABEL) == str(attempt)
            and not deleting(p)
        ]
        resume = b.resume_step_of(running[0]) if running else self.st.get("lastCheckpointStep")
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
        self.replace_ended_pods()
        claim = self.claim_to_bind()
        held = [o["metadata"]["name"] for o in compute if self.held_for_claim(o, claim)]
        for obj in compute:
            if obj["metadata"]["name"] not in held:
                self.ensure(obj, "gang")
        if self.role_restarts(attempt):
            return self.finish()

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
        binding = why is not None and waits_on_volume_binding(why)
        if why is None and held:
            why = (
                f"pods {', '.join(held)} wait for PersistentVolumeClaim {claim} to bind "
                "(they are created once it is Bound)"
            )
            binding = True
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
            if binding:
                # Transient while the state PVC binds (created with the Workload, it may
                # still be in the PV controller's queue after a burst of admissions): the
                # reason stays PodsNotReady, with no Warning; the message says what the pods
                # wait for. A claim that never binds still ends at the pods-ready timeout
                # (the router pod, which mounts no state, starts its clock).
                self.condition("Running", False, "PodsNotReady", msg)
            else:
                if _cond_reason(self.old_status, "Running") != "Unschedulable":
                    self.plan.events.append(("Warning", "Unschedulable", msg))
                self.condition("Running", False, "Unschedulable", msg)
        else:
            self.condition("Running", False, "PodsNotReady", f"{ready}/{expected} pods Ready")
        self.phase(api.Phase.ADMITTED, "Admitted", f"ClusterQueue {cq}; flavors {flv}")
        if is_true(wl, "PodsReady"):
            self.workload_pods_ready(wl, False, f"{ready}/{expected} pods Ready")
        return self.finish()
