"""`algorithm.name: ppo` in a cluster: the megatron backend trains no value model, so a ppo
job with trainer.backend megatron is InvalidSpec before admission and nothing is created;
with the torch backend it is queued like any other job."""

from __future__ import annotations

from operator_helpers import job
from rlpost_operator import protocol as p

from rlpost import api


def test_ppo_with_megatron_is_invalid_before_admission_and_creates_nothing():
    trainer = {"replicas": 2, "gpusPerPod": 4, "backend": "megatron"}
    plan = p.reconcile(p.Observed(job=job(algorithm={"name": "ppo"}, trainer=trainer)))
    assert plan.actions == [] and plan.status["phase"] == "Invalid"
    (cond,) = [c for c in plan.status["conditions"] if c["type"] == "InvalidSpec"]
    assert cond["status"] == "True" and api.PPO_MEGATRON in cond["message"]
    plan = p.reconcile(p.Observed(job=job(algorithm={"name": "ppo", "criticLr": 1e-5})))
    assert plan.status.get("phase") != "Invalid"
    assert ("create", "Workload") in [(a.verb, a.kind) for a in plan.actions]
