"""`rlpost run` GPU placement: pure planning, so it runs without GPUs."""

from __future__ import annotations

import pytest

from rlpost.api import RLPostTrainJob, Transport
from rlpost.local.gpus import local_transport, plan_gpus, transport_problem
from tests.trainer.conftest import job_dict


def spec(trainer_gpus: int, engines: int, engine_gpus: int, transport: str = "auto"):
    d = job_dict(
        trainer={"gpusPerPod": trainer_gpus},
        rollout={"engine": "reference", "engines": engines, "gpusPerEngine": engine_gpus},
        weightSync={"transport": transport},
    )
    return RLPostTrainJob.model_validate(d).spec


def test_enough_gpus_give_every_role_its_own_and_nccl():
    s = spec(1, 2, 1)
    plan = plan_gpus(s, ["0", "1", "2", "3"])
    assert (plan.trainer, plan.engines, plan.shared) == ("0", ["1", "2"], False)
    assert local_transport(s, plan) == Transport.NCCL
    assert transport_problem(s, plan) is None


def test_too_few_gpus_are_shared_and_auto_becomes_gloo():
    s = spec(1, 2, 1)
    plan = plan_gpus(s, ["0"])
    assert (plan.trainer, plan.engines, plan.shared) == (None, [None, None], True)
    assert local_transport(s, plan) == Transport.GLOO
    problem = transport_problem(spec(1, 2, 1, "nccl"), plan)
    assert problem and "3 GPUs; this machine shows 1" in problem


@pytest.mark.parametrize("gpus", [[], ["0", "1"]])
def test_cpu_roles_stay_on_the_cpu_and_use_gloo(gpus):
    s = spec(0, 2, 0)  # the example job: no GPUs asked for
    plan = plan_gpus(s, gpus)
    assert plan.shared is False
    if gpus:
        assert (plan.trainer, plan.engines) == ("", ["", ""])  # hidden: CPU
    assert local_transport(s, plan) == Transport.GLOO
    assert "nccl needs GPUs" in (transport_problem(spec(0, 2, 0, "nccl"), plan_gpus(s, [])) or "")


def colocated_spec(transport: str = "auto", engine_gpus: int = 1):
    d = job_dict(
        mode="colocated",
        trainer={"gpusPerPod": 1},
        rollout={"engine": "reference", "engines": 1, "gpusPerEngine": engine_gpus},
        weightSync={"transport": transport},
    )
    return RLPostTrainJob.model_validate(d).spec


@pytest.mark.parametrize("gpus", [["0"], ["0", "1", "2"], []])
def test_colocated_roles_share_the_gpus_and_sync_by_ipc(gpus):
    s = colocated_spec()
    plan = plan_gpus(s, gpus)
    assert (plan.trainer, plan.engines) == (None, [None])  # every role sees the same GPUs
    assert local_transport(s, plan) == Transport.IPC
    assert transport_problem(s, plan) is None
    assert plan.describe(colocated=True).startswith("colocated: the trainer and the engines")


@pytest.mark.parametrize("transport", ["nccl", "gloo"])
def test_colocated_with_another_transport_is_refused(transport):
    s = colocated_spec(transport)
    problem = transport_problem(s, plan_gpus(s, ["0"]))
    assert problem and "use auto or ipc" in problem
