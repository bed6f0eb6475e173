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
3. a deleted engine pod is created again by the operator (same name, a new pod) and the
   new pod serves the current weights;
4. a deleted buffer pod is recreated on the same volume, and its durable log shows no group
   that was ready at the deletion lost and none trained twice;
and the job ends Succeeded with the last-5-step mean reward >= 0.9.

Issue 16 (must show 1, cluster part, and 2): the job scores its rewards on its Ray reward pool
(`reward.pool`: a head and one worker pod, `ray start` from the rollout image, admitted with
the job's Workload); Prometheus scrapes Ray's metrics from the pool's pods; between faults 3
and 4 the pool's worker pod is deleted while reward tasks are in flight: the operator
creates it again (same name, a new pod), Ray re-runs the tasks it held, every sample is
scored exactly once (one score per sample id in the buffer's log, no reward_error, no lost
or timed-out task) and the job goes on.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from e2e.cluster.localcluster import GiveUp
from e2e.incluster.conftest import NODE, kill_container
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
# The faults make the run's samples differ from the seeded example's, and without KL an
# unseeded run can settle at 7/8: one letter answered wrong with probability ~1, every group
# of it all 0, and GRPO learns nothing from such groups (CI once ended at 0.85, 'b' answered
# 'e' from step ~40 on). A little KL to the initial policy brings the other answers back into
# the samples (examples/README.md, the qwen3 example). The curve is otherwise the same: in
# local 250-step runs of seeds 1-4 the 5-step mean reached 0.9 at the same step with and
# without it, and ended at 0.978-0.997 with it.
SPEC["spec"]["algorithm"]["klCoef"] = 0.005
# The example's reward (exact_match) as a custom function, so that it runs on the job's Ray
# pool: one worker (one task CPU) of 100m CPU requested, the head the same, so the job
# (1.25 CPUs) and its pool fit the 2-core node next to the operators; 2Gi each (a Ray head
# with its dashboard: about 1.9 GB of RSS measured here, shared pages counted twice), 12Gi
# for the job in the tenant's 16Gi. A task that loses its worker waits for the replacement
# pod: the timeout leaves it room.
SPEC["spec"]["reward"] = {
    "type": "custom",
    "function": "rlpost_rollout.rewards.builtin:exact_match",
    "timeoutSeconds": 300,
    "pool": {"workers": 1, "cpusPerWorker": 0.1, "memory": "2Gi", "maxInFlight": 16},
}


def _role(pod: dict) -> str:
    return pod["metadata"]["labels"].get("rlpost.dev/role", "?")


def _buffer_log(c, ns: str) -> Path:
    """The buffer's event log on the host, inside the job's state PV."""
    pv = c.get_json("pvc", f"{JOB}-state", "-n", ns)["spec"]["volumeName"]
    root = Path(c.get_json("pv", pv)["spec"]["hostPath"]["path"])
    (log,) = root.rglob("buffer.jsonl")
    return log


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in a /metrics text (0 when absent)."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        head = line[len(name) : len(name) + 1]
        if line.startswith(name) and head in ("{", " ") and all(w in line for w in want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _events(data: bytes) -> list[dict]:
    return [json.loads(x) for x in data.decode().splitlines() if x.strip()]


def _replay(data: bytes, tmp: Path):
    """The buffer's own replay (its Store class) of a log prefix."""
    from rlpost_rollout.buffer.store import Store

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "buffer.jsonl").write_bytes(data)
    store = Store(tmp)
    store.close()
    return store.state


def _reward_curve(data: bytes, every: int = 20) -> dict[int, float]:
    """Mean reward of the groups served to each `every`-th step (the last serve of a step
    wins: a step redone after a restart counts once), to read a learning failure by."""
    groups: dict[str, list[float]] = {}
    served: dict[int, list[str]] = {}
    for e in _events(data):
        if e["t"] == "accept":
            groups[e["group"]["group_id"]] = [x["reward"] for x in e["group"]["samples"]]
        elif e["t"] == "serve":
            served[e["step"]] = e["group_ids"]
    curve = {}
    for step in sorted(served):
        if step % every == 0 or step == max(served):
            r = [x for g in served[step] for x in groups.get(g, [])]
            curve[step] = round(sum(r) / len(r), 3) if r else float("nan")
    return curve


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
    _pool_runs_as_pods_and_prometheus_scrapes_ray(c, real_platform, ns)
    urgent = json.loads(json.dumps(SPEC))
    urgent["metadata"] = {"name": "urgent", "namespace": ns}
    urgent["spec"]["priorityClassName"] = f"high-{sfx}"
    urgent["spec"]["steps"] = 5
    urgent["spec"]["reward"] = {"type": "exact_match"}  # no pool: preempts with less
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
    # quota comes back and the preempted job is admitted again. Its 5 steps may be done
    # before the preempted job's pods are gone (the pool's pods take a while to stop).
    c.wait_for(
        "urgent Running or done",
        lambda: status("urgent").get("phase") in ("Running", "Succeeded"),
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

    # 3. A deleted engine pod is created again (the operator's own pod: same name, a new
    # uid) and serves the current weights.
    engines = [p for p in _pods(c, ns) if _role(p) == "rollout"]
    gone = engines[0]["metadata"]["name"]
    gone_uid = engines[0]["metadata"]["uid"]
    c.kubectl("delete", "pod", "-n", ns, gone, "--wait=false")

    def new_engine_synced():
        fresh = [
            p
            for p in _pods(c, ns)
            if _role(p) == "rollout"
            and p["metadata"]["uid"] != gone_uid
            and p["status"].get("podIP")
            and "deletionTimestamp" not in p["metadata"]
        ]
        names = sorted(p["metadata"]["name"] for p in fresh)
        return (
            names == sorted(p["metadata"]["name"] for p in engines)  # gone is back, same name
            and all(_engine_version(p) > 0 for p in fresh)
        )

    c.wait_for("a replacement engine at a current weight version", new_engine_synced, 600, 2)

    # 3b. The reward pool's worker pod deleted while tasks are in flight.
    _pool_worker_lost_mid_batch(c, ns, status, not_failed)

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
    final = log.read_bytes()
    after = _replay(final, tmp_path / "after")  # which keeps a copy for a post-mortem
    assert st["restarts"] == restarts + 1, st
    assert st["rewardMean"] >= 0.9, (st, _reward_curve(final))
    assert st["step"] == SPEC["spec"]["steps"], st

    served_after = [
        g for step, b in after.batches.items() if step >= before.next_step for g in b.group_ids
    ]
    stale_after = {x["group_id"] for x in after.stale}
    lost = [g for g in before.ready if g not in served_after and g not in stale_after]
    assert not lost, f"{len(lost)} accepted groups ready at the deletion never served"
    # Every accepted sample has one score, and no sample id was accepted twice.
    samples = [x for e in _events(final) if e["t"] == "accept" for x in e["group"]["samples"]]
    ids = [x["sample_id"] for x in samples]
    assert len(ids) == len(set(ids)), "a sample accepted twice"
    assert all(isinstance(x.get("reward"), float) for x in samples)
    trained = [g for b in after.batches.values() for g in b.group_ids]
    assert len(trained) == len(set(trained)), "a group served to two steps"
    assert sorted(after.batches) == list(range(SPEC["spec"]["steps"])), sorted(after.batches)[:5]


def _pool_pods(c, ns: str, node: str) -> list[dict]:
    sel = f"app.kubernetes.io/instance={JOB},rlpost.dev/ray-node={node}"
    return [
        p
        for p in c.get_json("pods", "-n", ns, "-l", sel)["items"]
        if "deletionTimestamp" not in p["metadata"]
    ]


def _pool_runs_as_pods_and_prometheus_scrapes_ray(c, platform, ns: str) -> None:
    """The pool is real pods on the node (a head and one worker, Ready, running `ray
    start` as uid 10001), the buffer scores through it, and the real Prometheus scrapes Ray's
    own metrics from the pods' `metrics` ports."""
    (head,) = _pool_pods(c, ns, "head")
    (worker,) = _pool_pods(c, ns, "worker")
    for p in (head, worker):
        assert _ready(p) and p["spec"]["nodeName"] == NODE, p["metadata"]["name"]
        assert p["spec"]["securityContext"]["runAsUser"] == 10001
    (buffer,) = [p for p in _pods(c, ns) if _role(p) == "buffer"]
    text = _get(f"http://{buffer['status']['podIP']}:8000/metrics")
    assert _metric(text, "rlpost_reward_pool_tasks_total", outcome="ok") > 0, text[-2000:]
    # The Ray cluster has both nodes alive (the dashboard's state API, through the head).
    nodes = json.loads(_get(f"http://{head['status']['podIP']}:8265/api/v0/nodes"))
    alive = [n for n in nodes["data"]["result"]["result"] if n["state"] == "ALIVE"]
    assert len(alive) == 2, nodes
    prom = platform.prometheus
    targets = [
        (f"{p['status']['podIP']}:8080", {"namespace": ns, "role": "reward-pool"})
        for p in (head, worker)
    ]
    prom.set_targets("roles", targets)
    prom.wait_targets_up({t for t, _ in targets}, timeout=120)
    c.wait_for(
        "Ray's node metrics of both pool pods in Prometheus",
        lambda: len(prom.query('ray_node_cpu_count{role="reward-pool"}')) >= 2,
        timeout=120,
        interval=2,
    )


def _pool_worker_lost_mid_batch(c, ns: str, status, not_failed) -> None:
    (buffer,) = [p for p in _pods(c, ns) if _role(p) == "buffer"]
    metrics = f"http://{buffer['status']['podIP']}:8000/metrics"
    before = _get(metrics)
    (worker,) = _pool_pods(c, ns, "worker")
    gone = worker["metadata"]["name"]
    gone_uid = worker["metadata"]["uid"]
    deadline = time.monotonic() + 300
    inflight = 0.0
    while time.monotonic() < deadline:  # the moment reward tasks are in flight
        inflight = _metric(_get(metrics), "rlpost_reward_pool_inflight")
        if inflight > 0:
            break
        time.sleep(0.02)
    assert inflight > 0, "no reward task in flight in 300 s"
    c.kubectl("delete", "pod", "-n", ns, gone, "--wait=false")
    step_at_kill = status()["step"]
    c.wait_for(
        "the pool worker created again and Ready",
        lambda: (
            [
                p
                for p in _pool_pods(c, ns, "worker")
                if p["metadata"]["uid"] != gone_uid and p["metadata"]["name"] == gone
            ]
            and all(_ready(p) for p in _pool_pods(c, ns, "worker"))
        ),
        timeout=600,
        interval=2,
    )
    c.wait_for(
        "training goes on past the pool worker's loss",
        lambda: not_failed(status())["step"] >= step_at_kill + 5,
        timeout=900,
        interval=2,
    )
    after = _get(metrics)
    # Nothing lost, timed out or failed: every task of the lost worker was re-run by Ray.
    for outcome in ("lost", "timeout", "error"):
        assert _metric(after, "rlpost_reward_pool_tasks_total", outcome=outcome) == 0, outcome
    assert _metric(after, "rlpost_samples_total", outcome="reward_error") == _metric(
        before, "rlpost_samples_total", outcome="reward_error"
    )
    ok = _metric(after, "rlpost_reward_pool_tasks_total", outcome="ok")
    assert ok > _metric(before, "rlpost_reward_pool_tasks_total", outcome="ok")
    (head,) = _pool_pods(c, ns, "head")
    query = urllib.parse.urlencode(
        {"filter_keys": "attempt_number", "filter_predicates": "!=", "filter_values": "0",
         "limit": "10000"}
    )  # fmt: skip
    retried = json.loads(_get(f"http://{head['status']['podIP']}:8265/api/v0/tasks?{query}"))
    n = len(retried["data"]["result"]["result"])
    print(f"pool worker {gone} deleted with {inflight:.0f} reward tasks in flight at step "
          f"{step_at_kill}; tasks Ray re-ran: {n}; ok tasks: {ok:.0f}")  # fmt: skip
