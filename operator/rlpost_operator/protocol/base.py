"""One reconcile pass: the snapshot plus the plan being built, and the small tools every
step uses (act, condition, phase, ensure, stop_gang, fail, finish)."""

from __future__ import annotations

import copy
from typing import Any

from rlpost import api

from .. import builders as b
from ..constants import ROLE_LABEL
from .facts import (
    _label,
    _normal,
    deleting,
    job_ref,
    needs_write,
    set_condition,
    ts,
)
from .model import (
    COMPUTE_KINDS,
    COMPUTE_ROLES,
    Action,
    Observed,
    Plan,
)


class PassBase:
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

    def patch_workload_status(self, wl: dict, status: dict, why: str) -> None:
        """A status write of the Workload, guarded by the resourceVersion it was read at."""
        body = {"metadata": {"resourceVersion": wl["metadata"]["resourceVersion"]}}
        self.act(
            "patch_status", "Workload", wl["metadata"]["name"], {**body, "status": status}, why
        )

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
        """What stopping the gang deletes: its pods (the operator creates them directly)."""
        return [
            c
            for c in self.obs.children
            if c.get("kind") in COMPUTE_KINDS and _label(c, ROLE_LABEL) in COMPUTE_ROLES
        ]

    def compute_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.obs.pods if _label(p, ROLE_LABEL) in COMPUTE_ROLES]

    def stop_gang(self, why: str) -> bool:
        """Delete the compute children; True once no pod of the gang is left."""
        for obj in self.compute_objects():
            if not deleting(obj):
                self.act("delete", obj["kind"], obj["metadata"]["name"], why=why)
        return not self.compute_pods()

    def fail(self, reason: str, msg: str) -> None:
        """The job is Failed: say why (a Warning Event), stop the gang."""
        self.condition("Failed", True, reason, msg)
        self.condition("Running", False, "Failed", msg)
        self.st["completionTime"] = self.st.get("completionTime") or ts(self.obs.now)
        self.st["readyPods"] = None
        self.phase(api.Phase.FAILED, reason, msg, warning=True)
        self.stop_gang("job failed")

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
        if self.plan.step == "create_workload":  # the status waits for the next pass
            self.plan.status = copy.deepcopy(self.old_status)
            return self.plan
        for key in [k for k, v in self.st.items() if v is None]:
            del self.st[key]
        if self.generation is not None:
            self.st["observedGeneration"] = self.generation
        self.plan.status = self.st
        self.plan.status_changed = _normal(self.st) != _normal(self.old_status)
        return self.plan
