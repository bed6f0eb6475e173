"""The job's state PVC against the real PV controller and scheduler: the pods that mount a
claim the PV controller binds on its own (an Immediate class) are made once it is bound, so
the scheduler never fails them on the claim, and the job says what it waits for."""

from __future__ import annotations

import json
import time

import pytest

from e2e.operator.conftest import job_doc, wait
from e2e.operator.test_operator import cond, get, pods_of, submit, wait_phase

pytestmark = pytest.mark.cluster

IMMEDIATE = "rlpost-e2e-immediate"
STATE_PODS = {"bind-trainer-0", "bind-trainer-1", "bind-buffer"}  # they mount bind-state


@pytest.fixture(scope="module")
def immediate_class(cluster):
    """A class that binds claims as soon as a PV matches (no provisioner: the suite's
    static-PV binder makes the PVs)."""
    cluster.apply(
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": IMMEDIATE},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
            "reclaimPolicy": "Retain",
        }
    )
    yield IMMEDIATE
    cluster.kubectl("delete", "storageclass", IMMEDIATE, "--wait=false", check=False)


def failed_scheduling(cluster, ns) -> list[str]:
    out = cluster.kubectl(
        "get", "events", "-n", ns, "--field-selector", "reason=FailedScheduling", "-o", "json"
    ).stdout
    return [e["involvedObject"]["name"] for e in json.loads(out)["items"]]


def pod_names(cluster, ns) -> set[str]:
    return {p["metadata"]["name"] for p in pods_of(cluster, "bind", ns)}


def test_pods_that_mount_the_state_claim_are_made_once_it_is_bound(
    immediate_class, cluster, op, namespace, state_pvs
):
    ns = namespace
    state_pvs.hold(ns, "bind-state")  # the PV controller has not bound it yet
    doc = job_doc("bind", ns, checkpoint={"intervalSteps": 10, "storageClassName": IMMEDIATE})
    submit(cluster, doc)

    def waiting():
        j = get(cluster, "rljob", "bind", ns)
        msg = (cond(j, "Running") or {}).get("message", "")
        return "wait for PersistentVolumeClaim bind-state to bind" in msg and j

    job = wait(cluster, "the job saying its pods wait for the claim", waiting, 30)
    run = cond(job, "Running")
    assert run["reason"] == "PodsNotReady", run
    assert "pods bind-trainer-0, bind-trainer-1, bind-buffer wait for" in run["message"], run
    # the pods that mount no state start at once; the others are not made
    assert pod_names(cluster, ns) == {"bind-rollout-0", "bind-rollout-1", "bind-router"}
    time.sleep(5)  # still so while the claim is Pending
    assert not STATE_PODS & pod_names(cluster, ns)
    assert get(cluster, "pvc", "bind-state", ns)["status"]["phase"] == "Pending"
    # bound: the rest of the gang is made and the job runs; the scheduler never failed a
    # pod of it, and neither the job nor a pod has a Warning (the PV controller's own, on
    # the claim, say that no volume matched yet)
    state_pvs.release(ns, "bind-state")
    wait_phase(cluster, "bind", ns, "Running", timeout=60)
    assert pod_names(cluster, ns) >= STATE_PODS
    assert failed_scheduling(cluster, ns) == []
    warnings = json.loads(
        cluster.kubectl(
            "get", "events", "-n", ns, "--field-selector", "type=Warning", "-o", "json"
        ).stdout
    )["items"]
    said = [
        (e["involvedObject"]["kind"], e["reason"], e["message"])
        for e in warnings
        if e["involvedObject"]["kind"] != "PersistentVolumeClaim"
    ]
    assert said == [], said
