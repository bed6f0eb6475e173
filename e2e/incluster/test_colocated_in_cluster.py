"""mode: colocated on the real node (issue 12's last piece): the example file with
`mode: colocated` becomes ONE worker pod that runs the trainer container and an engine
container (from the rollout image) side by side. Per step the trainer pauses its own pod's
engine, which releases its memory; it trains; resumes it and pushes the new weights over
shared memory (transport ipc: /dev/shm and the shm manager's socket, shared by the two
containers). The router finds the engine by the worker pod's labels; the buffer generates
through the router, as in disaggregated mode.

Shown: both containers of the worker pod Running (and the pod Ready: its engine got
weights), status.step advancing, the engine's weight version advancing, the job Succeeded
with a last-5-step mean reward >= 0.9, the Workload Finished.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml

from e2e.cluster.localcluster import GiveUp
from e2e.incluster.conftest import NODE
from e2e.incluster.test_train_in_cluster import (
    EXAMPLE,
    _condition,
    _engine_version,
    _gang_report,
    _ready,
    ensure_data_pvc,
)
from e2e.incluster.test_train_in_cluster import _pods as train_pods

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(5400)]

JOB = "copy-colocated"


def colocated_doc(ns: str) -> dict:
    """examples/copy-first-letter.yaml, same steps, as one CPU worker pod with one engine."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"] = {"name": JOB, "namespace": ns}
    spec = doc["spec"]
    spec["mode"] = "colocated"
    spec["rollout"]["engines"] = 1  # one engine container, in the worker pod
    assert spec["trainer"]["replicas"] == 1 and spec["trainer"]["gpusPerPod"] == 0
    assert spec["rollout"]["maxStaleness"] == 0 and spec["weightSync"]["transport"] == "auto"
    return doc


def _pods(c, ns: str) -> list[dict]:
    return train_pods(c, ns, JOB)


def _report(c, ns: str) -> str:
    return _gang_report(c, ns, JOB)


def test_colocated_job_trains_in_one_worker_pod(real_cluster, real_platform, images):
    c = real_cluster
    ns = real_platform.tenants[0].namespace
    ensure_data_pvc(c, real_platform, ns)
    doc = colocated_doc(ns)
    steps = doc["spec"]["steps"]
    t0 = time.monotonic()
    c.apply(doc)

    def status() -> dict:
        st = c.get_json("rlposttrainjob", JOB, "-n", ns).get("status", {})
        if st.get("phase") in ("Failed", "Invalid"):
            raise GiveUp(f"{json.dumps(st, indent=1)}\n{_report(c, ns)}")
        return st

    wl = c.wait_for("the Workload", lambda: status().get("workloadName"), 60)
    c.wait_for(
        "Workload admitted",
        lambda: _condition(c.get_json("workload", wl, "-n", ns), "Admitted"),
        timeout=120,
    )

    def worker() -> dict | None:
        pods = [p for p in _pods(c, ns) if p["metadata"]["labels"]["rlpost.dev/role"] == "worker"]
        return pods[0] if len(pods) == 1 else None

    def gang_ready() -> bool:
        pods = _pods(c, ns)
        roles = sorted(p["metadata"]["labels"]["rlpost.dev/role"] for p in pods)
        if roles != ["buffer", "router", "worker"]:  # no rollout pod: the engine is a container
            return False
        w = worker()
        running = {
            s["name"]
            for s in (w or {}).get("status", {}).get("containerStatuses", [])
            if "running" in s.get("state", {})
        }
        # Ready: the engine container passed its probe, so it has the trainer's weights.
        return (
            running == {"worker", "engine"}
            and all(_ready(p) for p in pods)
            and all(p["spec"]["nodeName"] == NODE for p in pods)
        )

    try:
        c.wait_for("worker (trainer + engine), router, buffer Ready", gang_ready, 600, interval=2)
    except TimeoutError:
        raise AssertionError(_report(c, ns)) from None
    gang_s = time.monotonic() - t0
    w = worker()
    assert w is not None
    # The trainer container and the rollout image's engine, in one pod.
    assert [ct["name"] for ct in w["spec"]["containers"]] == ["worker", "engine"]
    assert [ct["image"] for ct in w["spec"]["containers"]] == [images["trainer"], images["rollout"]]

    # Training moves: status.step advances, and so does the engine's weight version (read
    # from the worker pod's engine port, as the example test reads its engines').
    c.wait_for("status.step >= 2", lambda: (status().get("step") or 0) >= 2, 900, interval=2)
    first = c.wait_for("the engine's weight version > 0", lambda: _engine_version(w), 60)
    c.wait_for(
        "the engine's weight version advances",
        lambda: _engine_version(w) > first,
        timeout=300,
        interval=2,
    )

    try:
        st = c.wait_for(
            "job Succeeded",
            lambda: (s := status()).get("phase") == "Succeeded" and s,
            timeout=2400,
            interval=5,
        )
    except TimeoutError:
        raise AssertionError(f"{status()}\n{_report(c, ns)}") from None
    wall_s = time.monotonic() - t0
    assert st["step"] == steps, st
    assert st["rewardMean"] >= 0.9, st  # the trainer's last-5-step mean
    assert (st.get("weightVersion") or 0) >= steps - 1, st
    c.wait_for(
        "the Workload Finished",
        lambda: _condition(c.get_json("workload", wl, "-n", ns), "Finished"),
        timeout=60,
    )
    print(
        json.dumps(
            {
                "what": "examples/copy-first-letter.yaml with mode: colocated on the real node",
                "apply_to_gang_ready_s": round(gang_s, 1),
                "apply_to_succeeded_s": round(wall_s, 1),
                "steps": st["step"],
                "reward_mean_last5": st["rewardMean"],
            }
        )
    )
