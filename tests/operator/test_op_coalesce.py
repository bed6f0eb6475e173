"""Counts-only status changes (ready pods, the trainer's step) are held back a moment so
that the next counts go in the same write; anything else is written at once."""

from __future__ import annotations

import copy

import pytest
from rlpost_operator import protocol as p
from rlpost_operator import writes as writes_mod
from rlpost_operator.controller import Controller

OLD = {
    "phase": "Admitted",
    "readyPods": "1/4",
    "step": 3,
    "conditions": [
        {
            "type": "Running",
            "status": "False",
            "reason": "PodsNotReady",
            "message": "1/4 pods Ready",
            "lastTransitionTime": "2026-12-02T00:00:00Z",
        }
    ],
}


def counts(ready: str, step: int = 3) -> dict:
    st = copy.deepcopy(OLD)
    st["readyPods"] = ready
    st["step"] = step
    st["conditions"][0]["message"] = f"{ready} pods Ready"
    st["conditions"][0]["lastTransitionTime"] = "2026-12-02T00:00:05Z"
    return st


def test_progress_only_tells_counts_from_transitions():
    assert p.progress_only(OLD, counts("2/4"))
    assert p.progress_only(OLD, counts("1/4", step=4))
    running = counts("4/4")
    running["phase"] = "Running"
    assert not p.progress_only(OLD, running)
    flipped = counts("4/4")
    flipped["conditions"][0].update(status="True", reason="AllPodsReady")
    assert not p.progress_only(OLD, flipped)
    assert not p.progress_only(OLD, {**counts("2/4"), "restarts": 1})


def plan(status: dict, **kw) -> p.Plan:
    return p.Plan(step="start", status=status, status_changed=status != OLD, **kw)


def test_counts_are_held_then_written_and_transitions_never_wait(monkeypatch):
    ctl = Controller(kube=None, namespaces=["ns"])
    key = ("ns", "j")
    obs = p.Observed(job={"metadata": {"name": "j"}, "status": OLD})
    clock = [100.0]
    monkeypatch.setattr(writes_mod.time, "monotonic", lambda: clock[0])
    # the first counts-only change waits the whole window, the next ones what is left
    assert ctl.hold_progress(key, obs, plan(counts("2/4"))) == pytest.approx(2.0)
    clock[0] += 1.5
    assert ctl.hold_progress(key, obs, plan(counts("3/4"))) == pytest.approx(0.5)
    # a requeue asked by the protocol sooner than that is kept
    assert ctl.hold_progress(key, obs, plan(counts("3/4"), requeue_after=0.2)) == 0.2
    clock[0] += 0.6
    assert ctl.hold_progress(key, obs, plan(counts("3/4"))) is None  # written now
    # a new window starts after a write
    assert ctl.hold_progress(key, obs, plan(counts("3/4"))) == pytest.approx(2.0)
    # a phase change, an Event or a child write go at once, and end the held window
    running = counts("4/4")
    running["phase"] = "Running"
    assert ctl.hold_progress(key, obs, plan(running)) is None
    assert key not in ctl._held
    assert ctl.hold_progress(key, obs, plan(counts("2/4"), events=[("Normal", "R", "m")])) is None
    act = p.Action("apply", "Pod", "j-router", {}, "gang")
    assert ctl.hold_progress(key, obs, plan(counts("2/4"), actions=[act])) is None
    # nothing changed: nothing to hold
    assert ctl.hold_progress(key, obs, plan(OLD)) is None
