"""Must-show 7-9: malformed specs, kill -9 of the operator mid-lifecycle, an idle minute."""

from __future__ import annotations

import copy
import json
import time

import pytest

from e2e.operator.conftest import job_doc, wait
from e2e.operator.test_operator import (
    cond,
    get,
    items,
    maybe,
    pods_of,
    submit,
    wait_phase,
    workloads,
)

pytestmark = pytest.mark.cluster


def _set(doc, path, value):
    d = doc["spec"]
    *parents, last = path.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    if value is DELETE:
        d.pop(last, None)
    else:
        d[last] = value
    return doc


DELETE = object()

# (name, path, value, what the message must say). Rejected by the API server: schema
# (enums, minimums, patterns, required, unknown fields) and CEL rules of the CRD.
REJECTED = [
    ("bad-mode", "mode", "hybrid", "Unsupported value"),
    ("zero-replicas", "trainer.replicas", 0, "should be greater than or equal to 1"),
    ("stale-colocated", "mode", "colocated", "set rollout.maxStaleness to 0"),
    ("tp-not-dividing", "trainer.parallelism", {"tensor": 3}, "must divide"),
    ("remote-no-url", "reward", {"type": "remote"}, "reward.url is required"),
    ("no-data", "data", DELETE, "spec.data: Required value"),
    ("typo-field", "trainer.replicaz", 2, "unknown field"),
    ("zero-lr", "algorithm.lr", 0, "should be greater than 0"),
    ("ipc-disagg", "weightSync.transport", "ipc", "ipc weight sync needs colocated mode"),
    ("bad-memory", "trainer.resources", {"cpu": "1", "memory": "lots"}, "should match"),
    ("custom-no-fn", "reward", {"type": "custom"}, "reward.function"),
]


def test_7_malformed_specs_rejected_or_invalid_and_nothing_created(cluster, op, namespace):
    ns = namespace
    for name, path, value, says in REJECTED:
        doc = _set(job_doc(name, ns), path, value if value is DELETE else copy.deepcopy(value))
        if name == "stale-colocated":
            doc["spec"]["rollout"]["maxStaleness"] = 2
        proc = cluster.kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
        assert proc.returncode != 0, f"{name} was accepted"
        assert says in proc.stderr, f"{name}: {proc.stderr}"
    # Accepted by the schema, refused by the operator: InvalidSpec, a Warning Event, nothing.
    operator_checks = [
        (_set(job_doc("no-queue", ns), "queueName", DELETE), "spec.queueName is not set"),
        (job_doc("no-class", ns, priorityClassName="nope"), "WorkloadPriorityClass 'nope'"),
        (_set(job_doc("no-model", ns), "model", {"tokenizer": "char:ab"}), "set model.path"),
    ]
    for doc, _ in operator_checks:
        submit(cluster, doc)
    for doc, says in operator_checks:
        name = doc["metadata"]["name"]
        job = wait_phase(cluster, name, ns, "Invalid", timeout=30)
        c = cond(job, "InvalidSpec")
        assert c["status"] == "True" and says in c["message"], c
    events = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    warned = {e["involvedObject"]["name"] for e in events if e["reason"] == "InvalidSpec"}
    assert warned == {"no-queue", "no-class", "no-model"}
    time.sleep(2)
    assert workloads(cluster, ns) == []
    for kind in ("statefulsets", "deployments", "pods", "services", "secrets"):
        assert items(cluster, kind, ns, "app.kubernetes.io/name=rlpost") == [], kind
    # fixing the spec is enough: the operator picks it up
    cluster.kubectl(
        "patch",
        "rljob",
        "no-model",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec":{"model":{"config":{"hidden_size":8}}}}',
    )
    wait_phase(cluster, "no-model", ns, "Running", "Admitted", timeout=60)
    assert cond(get(cluster, "rljob", "no-model", ns), "InvalidSpec") is None


def _counts(cluster, ns):
    out = {}
    for kind in (
        "workloads",
        "pods",
        "statefulsets",
        "deployments",
        "services",
        "configmaps",
        "secrets",
        "roles",
        "persistentvolumeclaims",
    ):
        out[kind] = len(items(cluster, kind, ns, "app.kubernetes.io/name=rlpost"))
    return out


def test_8_kill_9_at_several_points_no_duplicates_no_orphans(cluster, op, namespace):
    ns = namespace
    # 1: killed right after the job is created (before or while it creates the Workload)
    submit(cluster, job_doc("k9", ns))
    time.sleep(0.3)
    op.kill9()
    op.start()
    wait(cluster, "Workload exists", lambda: workloads(cluster, ns), 30)
    # 2: killed while the children are being created
    op.kill9()
    op.start()
    wait_phase(cluster, "k9", ns, "Running", timeout=120)
    # the gang is the operator's own pods, each created once under its stable name (no
    # StatefulSet or Deployment in between)
    assert sorted(p["metadata"]["name"] for p in pods_of(cluster, "k9", ns)) == [
        "k9-buffer",
        "k9-rollout-0",
        "k9-rollout-1",
        "k9-router",
        "k9-trainer-0",
        "k9-trainer-1",
    ]
    assert _counts(cluster, ns) == {
        "workloads": 1,
        "pods": 6,
        "statefulsets": 0,
        "deployments": 0,
        "services": 1,
        "configmaps": 2,
        "secrets": 1,
        "roles": 1,
        "persistentvolumeclaims": 1,
    }
    token = get(cluster, "secret", "k9-token", ns)["data"]["token"]
    state_uid = get(cluster, "pvc", "k9-state", ns)["metadata"]["uid"]
    # 3: killed while suspending; the protocol finishes after the restart
    cluster.kubectl(
        "patch", "rljob", "k9", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    time.sleep(0.5)
    op.kill9()
    op.start()
    wait_phase(cluster, "k9", ns, "Suspended", timeout=60)
    wait(cluster, "pods gone", lambda: not pods_of(cluster, "k9", ns), 60)
    (wl,) = workloads(cluster, ns)
    wait(
        cluster,
        "reservation cleared",
        lambda: not (workloads(cluster, ns)[0].get("status") or {}).get("admission"),
        60,
    )
    cluster.kubectl(
        "patch", "rljob", "k9", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    op.kill9()
    op.start()
    wait_phase(cluster, "k9", ns, "Running", timeout=120)
    assert get(cluster, "secret", "k9-token", ns)["data"]["token"] == token  # not re-made
    # the state volume survived the suspension and the restarts: the same PVC object
    assert get(cluster, "pvc", "k9-state", ns)["metadata"]["uid"] == state_uid
    # 4: killed right after the trainer reports done
    cluster.kubectl(
        "patch",
        "configmap",
        "k9-progress",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"data": {"step": "1000", "done": "true"}}),
    )
    time.sleep(0.3)
    op.kill9()
    op.start()
    wait_phase(cluster, "k9", ns, "Succeeded", timeout=60)
    wait(
        cluster,
        "Workload Finished without finalizer",
        lambda: (
            cond(workloads(cluster, ns)[0], "Finished")
            and not workloads(cluster, ns)[0]["metadata"].get("finalizers")
        ),
        60,
    )
    events = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    succeeded = [e for e in events if e["reason"] == "Succeeded"]
    assert len(succeeded) == 1, succeeded
    # 5: the job is deleted while the operator is down: nothing is left behind
    submit(cluster, job_doc("gone", ns))
    wait_phase(cluster, "gone", ns, "Running", timeout=120)
    op.kill9()
    cluster.kubectl("delete", "rljob", "gone", "-n", ns, "--wait=false")
    time.sleep(2)
    op.start()
    wait(
        cluster,
        "no orphan of 'gone'",
        lambda: (
            not items(
                cluster,
                "workloads,statefulsets,deployments,pods,configmaps,secrets,services,"
                "persistentvolumeclaims",
                ns,
                "app.kubernetes.io/instance=gone",
            )
        ),
        90,
    )
    # State after the last restart, read now (not before the kill): 'gone' stays gone, and
    # the restarted operator re-created nothing of it nor duplicated anything of k9.
    assert maybe(cluster, "rljob", "gone", ns) is None
    time.sleep(3)  # a few reconcile passes of the restarted operator
    assert not items(cluster, "workloads,pods", ns, "app.kubernetes.io/instance=gone")
    k9 = get(cluster, "rljob", "k9", ns)
    assert k9["status"]["phase"] == "Succeeded", k9["status"]
    assert cond(k9, "Succeeded")["status"] == "True"
    (wl,) = workloads(cluster, ns)
    assert wl["metadata"]["labels"]["app.kubernetes.io/instance"] == "k9"
    assert cond(wl, "Finished")["status"] == "True"
    assert not pods_of(cluster, "k9", ns)  # the finished gang stays stopped
    counts = _counts(cluster, ns)
    assert counts["workloads"] == 1 and counts["pods"] == 0, counts


def _versions(cluster, ns):
    kinds = (
        "rlposttrainjobs,workloads,statefulsets,deployments,pods,services,configmaps,"
        "secrets,serviceaccounts,roles,rolebindings,networkpolicies,events"
    )
    out = json.loads(cluster.kubectl("get", kinds, "-n", ns, "-o", "json").stdout)["items"]
    return {(o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"] for o in out}


def _scheduler_bookkeeping(changed: set, events: dict) -> set:
    """Events the scheduler's recorder wrote behind, about a pod that did not change in
    the window: the series of an earlier FailedScheduling (the recorder batches series
    updates, and under load one can land a minute later). Nothing the operator did."""
    out = set()
    for kind, name in changed:
        e = events.get(name) if kind == "Event" else None
        if e is None:
            continue
        who = e.get("reportingComponent") or (e.get("source") or {}).get("component")
        pod = (e.get("involvedObject") or {}).get("name")
        if who == "default-scheduler" and ("Pod", pod) not in changed:
            out.add((kind, name))
    return out


def test_9_idle_minute_zero_writes(cluster, op, namespace):
    ns = namespace
    submit(cluster, job_doc("idle", ns))
    submit(cluster, job_doc("waiting", ns, trainer={"replicas": 4, "gpusPerPod": 8}))
    wait_phase(cluster, "idle", ns, "Running", timeout=120)
    wait(
        cluster,
        "waiting is Queued with Kueue's message",
        lambda: (
            "insufficient"
            in (cond(get(cluster, "rljob", "waiting", ns), "Queued") or {}).get("message", "")
        ),
        60,
    )
    time.sleep(5)  # let the last watch events settle
    before_writes = op.writes()
    before = _versions(cluster, ns)
    time.sleep(60)
    after = _versions(cluster, ns)
    assert op.writes() == before_writes, op.metrics_text()
    changed = {k for k in after if before.get(k) != after[k]}
    evs = {e["metadata"]["name"]: e for e in items(cluster, "events", ns)}
    changed -= _scheduler_bookkeeping(changed, evs)
    events = [
        {k: e.get(k) for k in ("reason", "message", "count", "source", "reportingComponent")}
        for name, e in evs.items()
        if ("Event", name) in changed
    ]
    assert not changed, (changed, events)
    assert "rlpost_reconcile_duration_seconds_count" in op.metrics_text()
    # kopf keeps no state on the objects (no progress/diff-base annotations, no finalizers)
    for name in ("idle", "waiting"):
        meta = get(cluster, "rljob", name, ns)["metadata"]
        assert not meta.get("finalizers"), meta
        assert not [a for a in meta.get("annotations", {}) if "kopf" in a], meta
