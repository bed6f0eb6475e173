"""Issue 12, must show 2 and 3, on the real node: Kueue preemption, a trainer killed with
SIGKILL, a deleted engine pod and a deleted buffer pod each cost at most one checkpoint
interval, and the job still learns.

The example job (examples/copy-first-letter.yaml with more steps, so that every fault lands
mid-training) in the second tenant's namespace, one fault after another:
1. a higher-priority job in the same ClusterQueue preempts it mid-training: Suspended, its
   pods gone, its state PVC kept; the urgent job runs and is deleted; once re-admitted the
   preempted job resumes from the last checkpoint
   (status.resumeStep) and redoes at most one checkpoint interval of steps;
2. SIGKILL of the trainer's process (from the host: a container's init ignores a SIGKILL
   sent from inside its own pid namespace) restarts the gang from the checkpoint, counted
   in status.restarts;
3. a deleted engine pod is replaced and the replacement serves the current weights;
4. a deleted buffer pod is recreated on the same volume, and its durable log shows no group
   that was ready at the deletion lost and none trained twice;
and the job ends Succeeded with the last-5-step mean reward >= 0.9.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from e2e.cluster.localcluster import GiveUp
from e2e.incluster.conftest import kill_container
from e2e.incluster.test_train_in_cluster import (
    EXAMPLE,
    JOB,
    _engine_version,
    _pods,
    _ready,
    ensure_data_pvc,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(5400)]

SPEC = yaml.safe_load(EXAMPLE.read_text())
# (150 in the example) Room for four faults one after another: they take wall time (pods
# replaced, weights pushed), and a step takes well under a second, so the run must be long.
SPEC["spec"]["steps"] = 400
INTERVAL = SPEC["spec"]["checkpoint"]["intervalSteps"]


def _role(pod: dict) -> str:
    return pod["metadata"]["labels"].get("rlpost.dev/role", "?")


def _buffer_log(c, ns: str) -> Path:
    """The buffer's event log on the host, inside the job's state PV."""
    pv = c.get_json("pvc", f"{JOB}-state", "-n", ns)["spec"]["volumeName"]
    root = Path(c.get_json("pv", pv)["spec"]["hostPath"]["path"])
    (log,) = root.rglob("buffer.jsonl")
    return log


def _replay(data: bytes, tmp: Path):
    """The buffer's own replay (its Store class) of a log prefix."""
    from rlpost_rollout.buffer.store import Store

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "buffer.jsonl").write_bytes(data)
    store = Store(tmp)
    store.close()
    return store.state


def test_preemption_and_failures_cost_at_most_one_checkpoint_interval(
    real_cluster, real_platform, tmp_path
):
    c = real_cluster
    ns = real_platform.tenants[1].namespace
    sfx = real_platform.suffix
    ensure_data_pvc(c, real_platform, ns)
    job = json.loads(json.dumps(SPEC))
    job["metadata"]["namespace"] = ns
    c.apply(job)

    def status(name: str = JOB) -> dict:
        return c.get_json("rlposttrainjob", name, "-n", ns).get("status", {})

    def not_failed(st: dict) -> dict:
        if st.get("phase") in ("Failed", "InvalidSpec"):
            raise GiveUp(json.dumps(st, indent=1))
        return st

    # 1. Preemption after the first checkpoint.
    c.wait_for(
        f"step > {INTERVAL} with a checkpoint",
        lambda: (
            (not_failed(status()).get("lastCheckpointStep") or 0) >= INTERVAL
            and status()["step"] > INTERVAL
        ),
        timeout=900,
        interval=1,
    )
    urgent = json.loads(json.dumps(SPEC))
    urgent["metadata"] = {"name": "urgent", "namespace": ns}
    urgent["spec"]["priorityClassName"] = f"high-{sfx}"
    urgent["spec"]["steps"] = 5
    c.apply(urgent)
    st = c.wait_for(
        "the running job Suspended by preemption",
        lambda: (s := status()).get("phase") == "Suspended" and s,
        timeout=300,
        interval=1,
    )
    step_at_preemption = st["step"]
    ckpt = st["lastCheckpointStep"]
    assert ckpt >= INTERVAL, st
    c.wait_for(
        "its pods gone",
        lambda: not [p for p in _pods(c, ns) if _role(p) != "?"] or None,
        timeout=300,
    )
    pvc_uid = c.get_json("pvc", f"{JOB}-state", "-n", ns)["metadata"]["uid"]
    # The urgent job runs (admitted in the preempted job's place), then is deleted: its
    # quota comes back and the preempted job is admitted again.
    c.wait_for(
        "urgent Running",
        lambda: status("urgent").get("phase") == "Running",
        timeout=600,
        interval=1,
    )
    c.kubectl("delete", "rljob", "urgent", "-n", ns, "--wait=false")
    st = c.wait_for(
        "re-admitted and Running",
        lambda: (s := not_failed(status())).get("phase") == "Running" and s,
        timeout=600,
        interval=1,
    )
    assert st["resumeStep"] == ckpt, st
    assert step_at_preemption - st["resumeStep"] <= INTERVAL, (step_at_preemption, st)
    assert c.get_json("pvc", f"{JOB}-state", "-n", ns)["metadata"]["uid"] == pvc_uid

    # 2. SIGKILL of the trainer: the gang restarts from the last checkpoint.
    c.wait_for(
        "a checkpoint after the resume",
        lambda: (
            (not_failed(status()).get("lastCheckpointStep") or 0) > ckpt
            and status()["step"] > status()["lastCheckpointStep"] + 2
        ),
        timeout=600,
        interval=1,
    )
    (trainer,) = [p for p in _pods(c, ns) if _role(p) == "trainer"]
    restarts = status().get("restarts") or 0
    step_at_kill = status()["step"]
    kill_container(c, trainer)
    st = c.wait_for(
        "the gang restart counted",
        lambda: (s := not_failed(status())).get("restarts") == restarts + 1 and s,
        timeout=300,
        interval=1,
    )
    st = c.wait_for(
        "Running again from the checkpoint",
        lambda: (s := not_failed(status()))["phase"] == "Running" and s,
        timeout=600,
        interval=1,
    )
    assert ckpt < st["resumeStep"] <= step_at_kill, (step_at_kill, st)
    assert step_at_kill - st["resumeStep"] <= INTERVAL, (step_at_kill, st)

    # 3. A deleted engine pod is replaced and serves the current weights.
    engines = [p for p in _pods(c, ns) if _role(p) == "rollout"]
    gone = engines[0]["metadata"]["name"]
    c.kubectl("delete", "pod", "-n", ns, gone, "--wait=false")

    def new_engine_synced():
        fresh = [
            p
            for p in _pods(c, ns)
            if _role(p) == "rollout"
            and p["metadata"]["name"] != gone
            and p["status"].get("podIP")
            and "deletionTimestamp" not in p["metadata"]
        ]
        return len(fresh) == 2 and all(_engine_version(p) > 0 for p in fresh)

    c.wait_for("a replacement engine at a current weight version", new_engine_synced, 600, 2)

    # 4. A deleted buffer pod is recreated on the same volume; nothing ready is lost.
    buf = f"{JOB}-buffer"
    uid = c.get_json("pod", buf, "-n", ns)["metadata"]["uid"]
    log = _buffer_log(c, ns)
    c.kubectl("delete", "pod", "-n", ns, buf, "--wait=false")

    # Events are fsynced before they are acknowledged: what is on disk once the pod is
    # gone is everything the buffer ever accepted.
    def old_buffer_gone() -> bool:
        r = c.kubectl("get", "pod", buf, "-n", ns, "-o", "jsonpath={.metadata.uid}", check=False)
        return r.returncode != 0 or r.stdout.strip() != uid

    c.wait_for("the old buffer pod gone", old_buffer_gone, timeout=120)
    before = _replay(log.read_bytes(), tmp_path / "before")
    c.wait_for(
        "the buffer recreated and Ready",
        lambda: _ready(c.get_json("pod", buf, "-n", ns)),
        timeout=600,
        interval=2,
    )
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in c.get_json("pod", buf, "-n", ns)["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert f"{JOB}-state" in claims

    def finished():
        s = not_failed(status())
        return s if s.get("phase") == "Succeeded" else None

    st = c.wait_for("job Succeeded", finished, timeout=2400, interval=5)
    assert st["restarts"] == restarts + 1 and st["rewardMean"] >= 0.9, st
    assert st["step"] == SPEC["spec"]["steps"], st

    after = _replay(log.read_bytes(), tmp_path / "after")
    served_after = [
        g for step, b in after.batches.items() if step >= before.next_step for g in b.group_ids
    ]
    stale_after = {x["group_id"] for x in after.stale}
    lost = [g for g in before.ready if g not in served_after and g not in stale_after]
    assert not lost, f"{len(lost)} accepted groups ready at the deletion never served"
    trained = [g for b in after.batches.values() for g in b.group_ids]
    assert len(trained) == len(set(trained)), "a group served to two steps"
    assert sorted(after.batches) == list(range(SPEC["spec"]["steps"])), sorted(after.batches)[:5]
