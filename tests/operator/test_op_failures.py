"""Failures after admission reach the job (issue 13), branch by branch on snapshots: a child
the API server refuses, pods the scheduler cannot place, a pods-ready timeout that gives the
quota back, a role that refuses the spec at start, and the messages while admitted."""

from __future__ import annotations

import copy
from datetime import timedelta

from operator_helpers import FLAVORS, admit, cond, job, pod, stored
from rlpost_operator import builders as b
from rlpost_operator import protocol as p
from rlpost_operator import validation as v
from test_op_protocol import conds, running_world, settle, verbs, wl_for

REF = b.JobRef("j", "ns", "uid-1")
T0 = p.parse_ts("2026-01-01T00:00:00Z")  # creationTimestamp of stored() children


def admitted_world():
    """Admitted, children created, no pod Ready yet."""
    j = job(status={"phase": "Queued"})
    wl = admit(wl_for(j))
    _, j, children = settle(j, wl, now=T0)
    assert j["status"]["phase"] == "Admitted"
    return j, wl, children


def pod_hash(children, name="j-trainer-0"):
    live = next(c for c in children if c["kind"] == "Pod" and c["metadata"]["name"] == name)
    return p._annotation(live, p.HASH_ANNOTATION)


GANG = {
    ("Pod", n)
    for n in ("j-trainer-0", "j-trainer-1", "j-rollout-0", "j-rollout-1", "j-rollout-2")
    + ("j-router", "j-buffer")
}


# ---------------------------------------------------------------------------- refused children


def test_refused_child_fails_the_job_removes_everything_and_finishes_the_workload():
    j, wl, children = admitted_world()
    err = p.ChildError("Pod", "j-trainer-0", 422, "spec.containers: Invalid value", None)
    plan, j, children = settle(j, wl, children, child_errors=[err], now=T0)
    st = plan.status
    assert st["phase"] == "Failed"
    failed = conds(st)["Failed"]
    assert failed["reason"] == "ChildRejected"
    assert (
        "refused Pod j-trainer-0 (HTTP 422): spec.containers: Invalid value" in (failed["message"])
    )
    assert plan.events[0][:2] == ("Warning", "ChildRejected")
    # the whole gang goes: every pod the operator made, not only the refused one
    assert {(a.kind, a.name) for a in plan.actions if a.verb == "delete"} >= GANG
    assert not [a for a in plan.actions if a.verb in ("apply", "create")]
    # next pass: Workload Finished (quota back) and nothing half-created is kept
    plan, j, children = settle(j, wl, children, child_errors=[err], now=T0)
    assert ("patch_status", "Workload", "rlposttrainjob-j") in verbs(plan)
    fin = plan.actions[[a.kind for a in plan.actions].index("Workload")].body
    assert any(
        c["type"] == "Finished" and c["reason"] == "Failed" for c in fin["status"]["conditions"]
    )
    deleted = {(a.kind, a.name) for a in plan.actions if a.verb == "delete"}
    assert ("ConfigMap", "j-config") in deleted and ("Service", "j") in deleted


def test_refusal_of_an_older_version_of_the_child_is_ignored():
    j, wl, children = admitted_world()
    err = p.ChildError("Pod", "j-trainer-0", 422, "old", "not-the-current-hash")
    plan, _, _ = settle(j, wl, children, child_errors=[err], now=T0)
    assert plan.status["phase"] == "Admitted"


def test_retryable_refusal_shows_as_a_condition_and_keeps_applying():
    j, wl, children = admitted_world()
    err = p.ChildError("Pod", "j-trainer-0", 503, "etcd leader changed", pod_hash(children))
    plan, j, children = settle(j, wl, children, child_errors=[err], now=T0)
    c = conds(plan.status)["ChildrenApplied"]
    assert (c["status"], c["reason"]) == ("False", "Retrying") and "HTTP 503" in c["message"]
    assert plan.status["phase"] == "Admitted"
    plan, _, _ = settle(j, wl, children, now=T0)
    assert conds(plan.status)["ChildrenApplied"]["status"] == "True"


def test_retryable_codes():
    assert p.retryable(500) and p.retryable(0) and p.retryable(409) and p.retryable(429)
    assert p.retryable(404, 'roles.rbac.authorization.k8s.io "j-rlpost" not found')
    assert p.retryable(403, 'pods "x" is forbidden: exceeded quota: compute')
    assert not p.retryable(422) and not p.retryable(400) and not p.retryable(403, "forbidden")
    assert p.api_message('{"kind":"Status","message":"too\\n long"}') == "too long"


def test_refused_workload_is_invalid_spec():
    j = job()
    err = p.ChildError("Workload", "rlposttrainjob-j", 422, "podSets: Too many", None)
    plan = p.reconcile(p.Observed(job=j, child_errors=[err]))
    assert plan.status["phase"] == "Invalid"
    assert "Kueue refused the job's Workload" in conds(plan.status)["InvalidSpec"]["message"]
    assert plan.actions == []


# ---------------------------------------------------------------------------- before admission


def test_pod_larger_than_any_node_is_invalid_and_its_pending_workload_goes():
    j = job(trainer={"replicas": 1, "gpusPerPod": 16})
    cap = v.QueueCapacity("team-a", "team-a", {"gpu-a": {"gpu-a-0": 8}})
    plan = p.reconcile(p.Observed(job=j, capacity=cap))
    assert plan.status["phase"] == "Invalid" and plan.actions == []
    msg = conds(plan.status)["InvalidSpec"]["message"]
    assert "can never be scheduled: trainer pods request 16" in msg
    # a Workload already queued (no quota) is removed
    wl = wl_for(j)
    wl["status"] = {"conditions": [cond("QuotaReserved", "False", "Pending", "insufficient")]}
    plan = p.reconcile(p.Observed(job=j, workload=wl, capacity=cap))
    assert verbs(plan) == [("delete", "Workload", "rlposttrainjob-j")]
    # one made by an operator before 0.2 carries the resource-in-use finalizer: dropped first
    wl["metadata"]["finalizers"] = ["kueue.x-k8s.io/resource-in-use"]
    plan = p.reconcile(p.Observed(job=j, workload=wl, capacity=cap))
    assert verbs(plan) == [
        ("patch", "Workload", "rlposttrainjob-j"),
        ("delete", "Workload", "rlposttrainjob-j"),
    ]


def test_capacity_is_not_rechecked_once_admitted():
    j, wl, children, pods = running_world()
    cap = v.QueueCapacity("team-a", "team-a", {"gpu-a": {"gpu-a-0": 1}})
    plan, _, _ = settle(j, wl, children, pods, capacity=cap)
    assert plan.status["phase"] == "Running"


def test_long_name_is_invalid_without_the_cel_rule():
    name = "a" * 45
    j = job(name=name)
    plan = p.reconcile(p.Observed(job=j))
    assert plan.status["phase"] == "Invalid" and plan.actions == []
    assert "at most 44" in conds(plan.status)["InvalidSpec"]["message"]


# ---------------------------------------------------------------------------- scheduling


def pending(name, role, message):
    pd = pod(name, role, ready=False)
    pd["status"] = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
            }
        ],
    }
    return pd


SCHED = "0/4 nodes are available: 2 Insufficient nvidia.com/gpu, 2 node(s) had untolerated taint"


def gang_pods(unschedulable=True):
    pods = [pod("j-trainer-0", "trainer")]
    pods.append(
        pending("j-trainer-1", "trainer", SCHED) if unschedulable else pod("j-trainer-1", "trainer")
    )
    pods += [pod(f"j-rollout-{i}", "rollout") for i in range(3)]
    pods += [pod("j-router", "router"), pod("j-buffer", "buffer")]
    return pods


def test_unschedulable_pod_reaches_the_condition_and_an_event_then_times_out():
    j, wl, children = admitted_world()
    pods = gang_pods()
    now = T0 + timedelta(seconds=30)
    plan, j, children = settle(j, wl, children, pods, now=now)
    run = conds(plan.status)["Running"]
    assert run["reason"] == "Unschedulable"
    assert "6/7 pods Ready; pod j-trainer-1 cannot be scheduled: 0/4 nodes" in run["message"]
    assert plan.events == [("Warning", "Unschedulable", run["message"])]
    assert plan.requeue_after == 600 - 30
    # the same again: no new Event, nothing written
    plan, j, children = settle(j, wl, children, pods, now=now + timedelta(seconds=5))
    assert plan.events == [] and not plan.status_changed and plan.actions == []
    # past failurePolicy.podsReadyTimeoutSeconds: quota back (Workload deactivated), gang gone
    late = T0 + timedelta(seconds=601)
    plan, j, children = settle(j, wl, children, pods, now=late)
    assert plan.step == "pods_ready_timeout"
    patch = next(a for a in plan.actions if a.verb == "patch" and a.kind == "Workload")
    assert patch.body == {"spec": {"active": False}}
    assert {(a.kind, a.name) for a in plan.actions if a.verb == "delete"} == GANG
    st = plan.status
    assert st["phase"] == "Suspended" and st["podsReadyRequeues"] == 1
    assert st["requeueAt"] == p.ts(late + timedelta(seconds=60))
    sus = conds(st)["Suspended"]
    assert sus["reason"] == "PodsReadyTimeout" and SCHED in sus["message"]
    assert "quota given back" in sus["message"] and "admission" not in st
    assert plan.events[0][:2] == ("Warning", "PodsReadyTimeout")
    # Kueue has not evicted yet (still Admitted, now inactive): the gang is not recreated
    wl2 = copy.deepcopy(wl)
    wl2["spec"]["active"] = False
    plan, j, children = settle(j, wl2, children, pods, now=late)
    assert not [a for a in plan.actions if a.verb in ("apply", "create")]
    assert conds(plan.status)["Suspended"]["reason"] == "PodsReadyTimeout"
    # Kueue evicts (Deactivated): the reservation is cleared once the pods are gone
    wl2["status"]["conditions"].append(cond("Evicted", "True", "Deactivated", "deactivated"))
    plan, j, children = settle(j, wl2, children, [], now=late)
    assert ("patch_status", "Workload", "rlposttrainjob-j") in verbs(plan)
    assert conds(plan.status)["Suspended"]["reason"] == "PodsReadyTimeout"
    assert plan.status["phase"] == "Suspended" and "admission" not in plan.status
    # after the backoff the Workload is activated again
    wl3 = stored(wl_for(j))
    wl3["spec"]["active"] = False
    plan, j, _ = settle(j, wl3, [], [], now=late + timedelta(seconds=61))
    assert ("patch", "Workload", "rlposttrainjob-j") in verbs(plan)
    assert plan.actions[0].body == {"spec": {"active": True}}


UNBOUND = (
    "0/4 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: "
    "0/4 nodes are available: 4 Preemption is not helpful for scheduling."
)


def test_a_pod_waiting_for_its_claim_to_bind_is_not_reported_unschedulable():
    j, wl, children = admitted_world()
    pods = gang_pods()
    pods[1] = pending("j-trainer-1", "trainer", UNBOUND)
    now = T0 + timedelta(seconds=30)
    plan, j, children = settle(j, wl, children, pods, now=now)
    run = conds(plan.status)["Running"]
    # the state PVC binding after a burst is transient: no Warning, the reason stays
    # PodsNotReady, and the message says what the pod waits for
    assert run["reason"] == "PodsNotReady", run
    assert "6/7 pods Ready; pod j-trainer-1 cannot be scheduled: 0/4 nodes" in run["message"]
    assert "unbound immediate PersistentVolumeClaims" in run["message"]
    assert not [e for e in plan.events if e[0] == "Warning"], plan.events
    # the claim bound and the pod Ready: Running, and no Unschedulable Event was ever posted
    plan, j, children = settle(j, wl, children, gang_pods(unschedulable=False), now=now)
    assert plan.status["phase"] == "Running" and plan.events[-1][:2] != ("Warning", "Unschedulable")
    # a claim that never binds still ends at the pods-ready timeout, with the scheduler's why
    plan, j, children = settle(j, wl, children, pods, now=T0 + timedelta(seconds=601))
    assert plan.step != "pods_ready_timeout"  # the gang was Ready once: no start timeout now
    j2, wl2, children2 = admitted_world()
    plan, *_ = settle(j2, wl2, children2, pods, now=T0 + timedelta(seconds=601))
    assert plan.step == "pods_ready_timeout"
    assert UNBOUND in conds(plan.status)["Suspended"]["message"]


def test_pods_ready_timeout_past_the_requeue_limit_fails():
    j = job(
        status={"phase": "Queued", "podsReadyRequeues": 1},
        failurePolicy={"podsReadyRequeueLimit": 1},
    )
    wl = admit(wl_for(j))
    _, j, children = settle(j, wl, now=T0)
    plan, j, _ = settle(j, wl, children, gang_pods(), now=T0 + timedelta(seconds=601))
    assert plan.status["phase"] == "Failed"
    failed = conds(plan.status)["Failed"]
    assert (
        failed["reason"] == "PodsReadyTimeout" and "podsReadyRequeueLimit is 1" in failed["message"]
    )


def test_a_gang_that_was_ready_once_does_not_time_out():
    j, wl, children, pods = running_world()
    pods = [
        pending("j-trainer-1", "trainer", SCHED) if x["metadata"]["name"] == "j-trainer-1" else x
        for x in pods
    ]
    plan, _, _ = settle(j, wl, children, pods, now=T0 + timedelta(hours=2))
    assert plan.status["phase"] == "Admitted" and plan.step == "start"
    assert not any(a.verb == "patch" for a in plan.actions)


# ---------------------------------------------------------------------------- spec refused at start


def test_buffer_that_refuses_the_custom_function_fails_the_job_without_restart():
    j, wl, children, pods = running_world()
    buf = next(x for x in pods if x["metadata"]["name"] == "j-buffer")
    buf["status"]["containerStatuses"] = [
        {
            "name": "buffer",
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {
                "terminated": {
                    "exitCode": v.INVALID_SPEC_EXIT_CODE,
                    "message": "reward.function 'my.mod:f': cannot import 'my.mod'",
                }
            },
        }
    ]
    plan, j, _ = settle(j, wl, children, pods)
    st = plan.status
    assert st["phase"] == "Failed" and not st.get("restarts")
    assert conds(st)["Failed"]["reason"] == "InvalidSpec"
    assert "cannot import 'my.mod'" in conds(st)["InvalidSpec"]["message"]
    assert "j-buffer (buffer) refused the spec" in conds(st)["Failed"]["message"]
    # the next passes keep it (the spec itself parses: validate must not clear it)
    plan, j, _ = settle(j, wl, children, pods)
    assert conds(plan.status)["InvalidSpec"]["status"] == "True"


# ---------------------------------------------------------------------------- truthful messages


def test_quota_reserved_waiting_for_checks_does_not_say_waits_for_kueue():
    j = job(status={"phase": "Queued"})
    wl = admit(wl_for(j))
    wl["status"]["conditions"] = [cond("QuotaReserved", "True", "QuotaReserved")]
    plan = p.reconcile(p.Observed(job=j, workload=wl, flavors=FLAVORS))
    q = conds(plan.status)["Queued"]
    assert q["reason"] == "QuotaReserved" and "waits for Kueue" not in q["message"]


def test_admission_is_cleared_while_suspended():
    j, wl, children, pods = running_world()
    assert j["status"]["admission"]["clusterQueue"] == "team-a"
    j["spec"]["suspend"] = True
    plan, j, _ = settle(j, wl, children, pods)
    assert plan.status["phase"] == "Suspended" and "admission" not in plan.status


def test_replaced_workload_never_reads_running_while_the_gang_goes():
    j, wl, children, pods = running_world()
    wl["metadata"]["annotations"][p.HASH_ANNOTATION] = "old"
    plan, j, _ = settle(j, wl, children, pods)
    assert plan.status["phase"] == "Queued"
    assert conds(plan.status)["Running"]["status"] == "False"


def test_deleted_workload_never_reads_running_while_the_gang_goes():
    j, wl, children, pods = running_world()
    wl["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    plan, j, _ = settle(j, wl, children, pods)
    assert plan.status["phase"] == "Queued" and "admission" not in plan.status
    assert conds(plan.status)["Running"]["reason"] == "WorkloadGone"
    j2, _, children2, pods2 = running_world()
    plan, _, _ = settle(j2, None, children2, pods2)
    assert ("create", "Workload", "rlposttrainjob-j") in verbs(plan)
    assert plan.status["phase"] == "Queued"


def test_a_failed_container_says_its_last_log_line():
    """FallbackToLogsOnError on every container; the last line of the termination message
    (a traceback's error) reaches the failure message, trimmed."""
    from rlpost_operator.protocol.facts import pod_failure

    tb = (
        "Traceback (most recent call last):\n  ...\n"
        "PermissionError: [Errno 13] Permission denied: '/state/buffer'\n\n"
    )
    failed = {
        "metadata": {"name": "j-buffer"},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "buffer", "lastState": {"terminated": {"exitCode": 1, "message": tb}}}
            ],
        },
    }
    msg = pod_failure(failed)
    assert msg == (
        "pod j-buffer container buffer exited with code 1 (Error): "
        "PermissionError: [Errno 13] Permission denied: '/state/buffer'"
    )
    failed["status"]["containerStatuses"][0]["lastState"]["terminated"]["message"] = "x" * 900
    assert pod_failure(failed).endswith(": ..." + "x" * 300)
    failed["status"]["containerStatuses"][0]["lastState"]["terminated"].pop("message")
    assert pod_failure(failed).endswith("exited with code 1 (Error)")


def made_pods(plan):
    return {a.name for a in plan.actions if a.verb in ("apply", "create") and a.kind == "Pod"}


STATE_PODS = {"j-trainer-0", "j-trainer-1", "j-buffer"}  # the pods that mount j-state
MODES = {"fast": "Immediate", "local": "WaitForFirstConsumer"}


def queued_with_claim(checkpoint):
    """Queued with its Workload and `j-state` (made together, before admission; the API
    server gives a claim without a class none when the cluster has no default), then
    admitted."""
    j = job(status={"phase": "Queued"}, checkpoint=checkpoint)
    _, _, children = settle(j, now=T0)
    pvc = next(c for c in children if c["kind"] == "PersistentVolumeClaim")
    pvc["spec"]["storageClassName"] = checkpoint.get("storageClassName")
    pvc["status"] = {"phase": "Pending"}
    return j, admit(wl_for(j)), children


def test_pods_that_mount_the_state_claim_are_made_once_it_is_bound():
    # No class (static PVs) or an Immediate one: the PV controller binds the claim on its
    # own, and the pods that mount it are made after that (made earlier, the scheduler
    # fails them until then: a status write and a FailedScheduling Event each try).
    for ckpt in ({}, {"storageClassName": "fast"}):
        j, wl, children = queued_with_claim(ckpt)
        plan, j, children = settle(j, wl, children, now=T0, binding_modes=MODES)
        assert made_pods(plan) == {"j-rollout-0", "j-rollout-1", "j-rollout-2", "j-router"}
        run = conds(plan.status)["Running"]
        assert run["reason"] == "PodsNotReady", run
        assert (
            "0/7 pods Ready; pods j-trainer-0, j-trainer-1, j-buffer wait for "
            "PersistentVolumeClaim j-state to bind"
        ) in run["message"]
        assert not [e for e in plan.events if e[0] == "Warning"], plan.events
        # still Pending: nothing more is made
        plan, j, children = settle(j, wl, children, now=T0, binding_modes=MODES)
        assert made_pods(plan) == set()
        # bound: the rest of the gang is made
        pvc = next(c for c in children if c["kind"] == "PersistentVolumeClaim")
        pvc["status"] = {"phase": "Bound"}
        plan, j, children = settle(j, wl, children, now=T0, binding_modes=MODES)
        assert made_pods(plan) == STATE_PODS
        assert "wait for PersistentVolumeClaim" not in conds(plan.status)["Running"]["message"]


def test_a_claim_that_binds_with_its_first_pod_or_of_an_unknown_class_is_not_waited_for():
    # WaitForFirstConsumer binds only once a pod mounting it is scheduled; a class not
    # listed, or StorageClasses not readable (binding_modes None): every pod at once
    for ckpt, modes in (
        ({"storageClassName": "local"}, MODES),
        ({"storageClassName": "other"}, MODES),
        ({}, None),
    ):
        j, wl, children = queued_with_claim(ckpt)
        plan, *_ = settle(j, wl, children, now=T0, binding_modes=modes)
        assert made_pods(plan) > STATE_PODS, (ckpt, modes)


def test_a_claim_that_never_binds_ends_at_the_pods_ready_timeout_saying_so():
    j, wl, children = queued_with_claim({})
    plan, j, children = settle(j, wl, children, now=T0, binding_modes=MODES)
    plan, j, children = settle(
        j, wl, children, now=T0 + timedelta(seconds=601), binding_modes=MODES
    )
    assert plan.step == "pods_ready_timeout"
    msg = conds(plan.status)["Suspended"]["message"]
    assert "wait for PersistentVolumeClaim j-state to bind" in msg, msg
