"""The reconcile protocol, step by step, on snapshots (pure: no API server involved).

The e2e suite (e2e/operator) runs the same protocol against the real control plane; here
each branch is pinned down, including the one that matters most for a quiet cluster: a
pass over an unchanged world plans no write at all.
"""

from __future__ import annotations

import copy

from operator_helpers import FLAVORS, admit, cond, job, pod, stored
from rlpost_operator import builders as b
from rlpost_operator import protocol as p

REF = b.JobRef("j", "ns", "uid-1")


def verbs(plan):
    return [(a.verb, a.kind, a.name) for a in plan.actions]


def conds(status):
    return {c["type"]: c for c in status.get("conditions", [])}


def settle(j, wl=None, children=(), pods=(), **kw):
    """Reconcile, then feed the plan's writes back as the API server would store them."""
    obs = p.Observed(
        job=j, workload=wl, children=list(children), pods=list(pods), flavors=FLAVORS, **kw
    )
    plan = p.reconcile(obs)
    j2 = copy.deepcopy(j)
    j2["status"] = plan.status
    made = {(c["kind"], c["metadata"]["name"]): c for c in children}
    for a in plan.actions:
        if a.verb in ("apply", "create") and a.kind not in ("Workload", "RLPostTrainJob"):
            made[(a.kind, a.name)] = stored(a.body)
        if a.verb == "delete":
            made.pop((a.kind, a.name), None)
        if a.verb == "patch_status" and a.kind == "Workload" and wl is not None:
            wl.setdefault("status", {})["conditions"] = a.body["status"]["conditions"]
    return plan, j2, list(made.values())


def wl_for(j):
    spec = p.api.RLPostTrainJobSpec.model_validate(j["spec"])
    return stored(b.build_workload(REF, spec, "team-a"))


def test_new_job_creates_only_the_workload_and_is_queued():
    # first pass: the Workload (and the state volume) alone, nothing else written, and the
    # next pass asked for at once
    j = job()
    del j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    plan = p.reconcile(p.Observed(job=j))
    assert verbs(plan)[0] == ("create", "Workload", "rlposttrainjob-j")
    assert {v[1] for v in verbs(plan)} == {"Workload", "PersistentVolumeClaim"}
    assert not plan.status_changed and plan.events == [] and plan.status == {}
    assert plan.requeue_after is not None and plan.requeue_after < 0.1
    # next pass, the Workload there: the queue label, Queued, its Event
    wl = stored(next(a.body for a in plan.actions if a.kind == "Workload"))
    plan = p.reconcile(p.Observed(job=j, workload=wl))
    first = plan.actions[0]
    assert (first.verb, first.kind) == ("patch", "RLPostTrainJob")
    assert first.body["metadata"]["labels"] == {"kueue.x-k8s.io/queue-name": "team-a"}
    assert not [a for a in plan.actions if a.kind == "Workload"]
    assert plan.status["phase"] == "Queued"
    assert conds(plan.status)["Queued"]["status"] == "True"
    assert plan.events and plan.events[0][1] == "Queued"


def test_pending_workload_copies_kueue_message():
    j = job(status={"phase": "Queued"})
    wl = wl_for(j)
    msg = "couldn't assign flavors to pod set trainer: insufficient quota for nvidia.com/gpu"
    wl["status"] = {"conditions": [cond("QuotaReserved", "False", "Pending", msg)]}
    plan = p.reconcile(p.Observed(job=j, workload=wl, flavors=FLAVORS))
    assert plan.actions == []
    c = conds(plan.status)["Queued"]
    assert (c["status"], c["reason"], c["message"]) == ("True", "Pending", msg)
    assert plan.status["phase"] == "Queued"


def test_admitted_starts_children_then_running_then_quiet():
    j = job(status={"phase": "Queued"})
    wl = admit(wl_for(j))
    plan, j, children = settle(j, wl)
    kinds = {(a.verb, a.kind) for a in plan.actions}
    assert ("create", "Secret") in kinds and ("create", "ConfigMap") in kinds
    assert plan.status["phase"] == "Admitted" and plan.status["readyPods"] == "0/7"
    # the gang is the operator's own pods, one apply each: no workload controller between
    assert not kinds & {("apply", "StatefulSet"), ("apply", "Deployment")}
    gang = {a.name: a.body for a in plan.actions if a.verb == "apply" and a.kind == "Pod"}
    names = ["j-trainer-0", "j-trainer-1", "j-rollout-0", "j-rollout-1", "j-rollout-2"]
    assert sorted(gang) == sorted([*names, "j-router", "j-buffer"])
    for name in ("j-trainer-0", "j-trainer-1"):
        assert gang[name]["spec"]["nodeSelector"] == {"rlpost.dev/gpu-kind": "a"}
    roles = ["trainer", "trainer", "rollout", "rollout", "rollout"]
    pods = [pod(n, r) for n, r in zip(names, roles, strict=True)]
    pods += [pod("j-router", "router"), pod("j-buffer", "buffer")]
    plan, j, children = settle(j, wl, children, pods)
    # the Workload's PodsReady condition flips (what Kueue's waitForPodsReady reads)
    assert verbs(plan) == [("patch_status", "Workload", "rlposttrainjob-j")]
    assert p.is_true(wl, "PodsReady") and plan.status["phase"] == "Running"
    assert plan.events == [("Normal", "Running", "all 7 pods Ready")]
    # nothing changed: nothing to write, status identical
    plan, j2, _ = settle(j, wl, children, pods)
    assert plan.actions == [] and not plan.status_changed and plan.events == []
    assert j2["status"] == j["status"]


def running_world():
    j = job(status={"phase": "Queued"})
    wl = admit(wl_for(j))
    _, j, children = settle(j, wl)
    pods = [pod("j-trainer-0", "trainer"), pod("j-trainer-1", "trainer")]
    pods += [pod(f"j-rollout-{i}", "rollout") for i in range(3)]
    pods += [pod("j-router", "router"), pod("j-buffer", "buffer")]
    _, j, children = settle(j, wl, children, pods)
    assert j["status"]["phase"] == "Running"
    return j, wl, children, pods


def test_preemption_stops_then_clears_reservation_then_suspended():
    j, wl, children, pods = running_world()
    wl["status"]["conditions"].append(cond("Evicted", "True", "Preempted", "preempted by x"))
    plan, j, children = settle(j, wl, children, pods)
    deleted = {(a.kind, a.name) for a in plan.actions if a.verb == "delete"}
    assert deleted == {
        ("Pod", "j-trainer-0"),
        ("Pod", "j-trainer-1"),
        ("Pod", "j-rollout-0"),
        ("Pod", "j-rollout-1"),
        ("Pod", "j-rollout-2"),
        ("Pod", "j-router"),
        ("Pod", "j-buffer"),
    }
    assert not any(a.verb == "patch_status" for a in plan.actions)  # pods still there
    assert plan.status["phase"] == "Suspended" and plan.evicted
    # pods gone: quota reservation cleared the Kueue way
    plan, j, children = settle(j, wl, children, [])
    (patch,) = [a for a in plan.actions if a.verb == "patch_status"]
    st = patch.body["status"]
    assert st["admission"] is None
    c = {x["type"]: x for x in st["conditions"]}
    assert c["QuotaReserved"]["status"] == "False"
    assert c["Requeued"]["status"] == "True" and c["Requeued"]["reason"] == "Preempted"
    assert c["Admitted"]["status"] == "False"
    assert patch.body["metadata"]["resourceVersion"] == wl["metadata"]["resourceVersion"]
    assert conds(plan.status)["Suspended"]["reason"] == "Preempted"


def test_user_suspend_deactivates_workload_and_requeued_false():
    j, wl, children, pods = running_world()
    j["spec"]["suspend"] = True
    plan, j, children = settle(j, wl, children, pods)
    assert ("patch", "Workload", "rlposttrainjob-j") in verbs(plan)
    active = next(a for a in plan.actions if a.verb == "patch" and a.kind == "Workload")
    assert active.body == {"spec": {"active": False}}
    assert plan.status["phase"] == "Suspended"
    wl["spec"]["active"] = False
    wl["status"]["conditions"].append(cond("Evicted", "True", "Deactivated", "deactivated"))
    plan, j, children = settle(j, wl, children, [])
    (patch,) = [a for a in plan.actions if a.verb == "patch_status"]
    req = next(x for x in patch.body["status"]["conditions"] if x["type"] == "Requeued")
    assert req["status"] == "False" and req["reason"] == "Deactivated"


def test_resume_after_readmission_uses_last_checkpoint():
    j, wl, children, pods = running_world()
    progress = next(c for c in children if c["metadata"]["name"] == "j-progress")
    progress["data"] = {
        "step": "37",
        "weightVersion": "37",
        "lastCheckpointStep": "30",
        "rewardMean": "0.625",
    }
    wl["status"]["conditions"].append(cond("Evicted", "True", "Preempted", "x"))
    _, j, children = settle(j, wl, children, pods)
    _, j, children = settle(j, wl, children, [])
    assert j["status"]["lastCheckpointStep"] == 30 and j["status"]["step"] == 37
    assert j["status"]["rewardMean"] == 0.625
    wl2 = admit(wl_for(j), gpu_flavor="gpu-b")
    plan, j, children = settle(j, wl2, children, [])
    trainers = [a.body for a in plan.actions if a.kind == "Pod" and a.name.startswith("j-trainer-")]
    assert len(trainers) == 2
    for trainer in trainers:
        container = trainer["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RLPOST_RESUME_STEP"] == "30"
        assert trainer["metadata"]["annotations"]["rlpost.dev/resume-step"] == "30"
        assert trainer["spec"]["tolerations"][0]["value"] == "b"
    cm = next(a.body for a in plan.actions if a.name == "j-config")
    assert cm["data"]["resume-step"] == "30"
    assert plan.status["resumeStep"] == 30


def test_trainer_failure_restarts_then_fails_past_max_restarts():
    j, wl, children, pods = running_world()
    j["spec"]["failurePolicy"] = {"maxRestarts": 1}
    pods[0] = pod("j-trainer-0", "trainer", failed=True)
    plan, j, children = settle(j, wl, children, pods)
    assert plan.status["restarts"] == 1 and plan.status["phase"] == "Restarting"
    assert plan.restarted and any(a.verb == "delete" for a in plan.actions)
    # old pods gone -> the gang comes back as attempt 1
    plan, j, children = settle(j, wl, children, [])
    gang = [a.body for a in plan.actions if a.verb == "apply" and a.kind == "Pod"]
    assert len(gang) == 7
    assert {g["metadata"]["labels"]["rlpost.dev/attempt"] for g in gang} == {"1"}
    # a failure of the old attempt is not counted twice
    plan, j, children = settle(j, wl, children, [pod("j-trainer-0", "trainer", failed=True)])
    assert j["status"]["restarts"] == 1
    # a container exit of attempt 1 exceeds maxRestarts=1 -> Failed
    bad = pod("j-trainer-1", "trainer", attempt="1", exit_code=137)
    plan, j, children = settle(j, wl, children, [bad])
    assert plan.status["phase"] == "Failed"
    f = conds(plan.status)["Failed"]
    assert f["reason"] == "MaxRestartsExceeded" and "exited with code 137" in f["message"]
    assert "maxRestarts" in f["message"]
    # finished: gang gone -> Workload Finished(Failed)
    plan, j, children = settle(j, wl, children, [])
    (fin,) = [a for a in plan.actions if a.verb == "patch_status"]
    c = next(x for x in fin.body["status"]["conditions"] if x["type"] == "Finished")
    assert (c["status"], c["reason"]) == ("True", "Failed")
    wl["status"]["conditions"].append(cond("Finished", "True", "Failed"))
    # a Workload made by an operator before 0.2 carries the resource-in-use finalizer:
    # dropped once it is Finished
    wl["metadata"]["finalizers"] = ["kueue.x-k8s.io/resource-in-use"]
    plan, j, children = settle(j, wl, children, [])
    (drop,) = [a for a in plan.actions if a.verb == "patch"]
    assert drop.body["metadata"]["finalizers"] == []
    # done and released: another pass over the same world writes nothing
    wl["metadata"]["finalizers"] = []
    plan, j2, _ = settle(j, wl, children, [])
    assert plan.actions == [] and not plan.status_changed and plan.events == []


def test_done_succeeds_and_ttl_removes_children():
    j, wl, children, pods = running_world()
    j["spec"]["ttlSecondsAfterFinished"] = 0
    progress = next(c for c in children if c["metadata"]["name"] == "j-progress")
    progress["data"] = {"step": "100", "done": "true", "lastCheckpointStep": "100"}
    plan, j, children = settle(j, wl, children, pods)
    assert plan.status["phase"] == "Succeeded" and plan.status["step"] == 100
    assert conds(plan.status)["Succeeded"]["status"] == "True"
    wl["status"]["conditions"].append(cond("Finished", "True", "Succeeded"))
    wl["metadata"]["finalizers"] = []
    plan, j, children = settle(j, wl, children, [])
    deleted = {(a.kind, a.name) for a in plan.actions if a.verb == "delete"}
    assert ("ConfigMap", "j-config") in deleted and ("Service", "j") in deleted
    assert ("Secret", "j-token") in deleted


def test_invalid_specs_create_nothing():
    j = job(mode="colocated")
    j["spec"]["rollout"]["maxStaleness"] = 2
    plan = p.reconcile(p.Observed(job=j))
    assert plan.actions == [] and plan.status["phase"] == "Invalid"
    c = conds(plan.status)["InvalidSpec"]
    assert c["status"] == "True" and "maxStaleness to 0" in c["message"]
    assert plan.events[0][0] == "Warning"
    j = job()
    del j["spec"]["queueName"]
    plan = p.reconcile(p.Observed(job=j, default_queue_exists=False))
    assert (
        plan.actions == []
        and "spec.queueName is not set" in plan.status["conditions"][0]["message"]
    )
    plan = p.reconcile(p.Observed(job=j, default_queue_exists=True))
    assert ("create", "Workload", "rlposttrainjob-j") in verbs(plan)
    j = job(priorityClassName="nope")
    plan = p.reconcile(p.Observed(job=j, priority_class_exists=False))
    assert plan.actions == [] and "WorkloadPriorityClass 'nope'" in str(plan.status)


def test_workload_deleted_drops_finalizer_after_gang_gone_and_orphans():
    # A Workload made by an operator before 0.2 (today's carry no finalizer), being deleted.
    j, wl, children, pods = running_world()
    wl["metadata"]["finalizers"] = ["kueue.x-k8s.io/resource-in-use"]
    wl["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    plan, j, children = settle(j, wl, children, pods)
    assert not any(a.verb == "patch" for a in plan.actions)
    plan, j, children = settle(j, wl, children, [])
    (drop,) = [a for a in plan.actions if a.verb == "patch"]
    assert drop.body["metadata"]["finalizers"] == []
    assert p.orphan_workload_plan(wl)[0].body["metadata"]["finalizers"] == []


def test_state_pvc_is_created_once_and_kept_across_restarts():
    # made with the Workload, so it is bound by the time Kueue admits the gang
    plan = p.reconcile(p.Observed(job=job()))
    assert verbs(plan) == [
        ("create", "Workload", "rlposttrainjob-j"),
        ("create", "PersistentVolumeClaim", "j-state"),
    ]
    j = job(status={"phase": "Queued"})
    wl = admit(wl_for(j))
    plan, j, children = settle(j, wl)
    assert ("create", "PersistentVolumeClaim", "j-state") in verbs(plan)
    pvc = next(a.body for a in plan.actions if a.kind == "PersistentVolumeClaim")
    assert pvc["metadata"]["ownerReferences"][0]["kind"] == "RLPostTrainJob"
    plan, j, children = settle(j, wl, children)
    assert not any(a.kind == "PersistentVolumeClaim" for a in plan.actions)  # never re-made
    # stopping the gang (eviction) leaves it alone: it is not a compute child
    wl["status"]["conditions"].append(cond("Evicted", "True", "Preempted", "x"))
    plan, j, children = settle(j, wl, children, [])
    assert not any(a.kind == "PersistentVolumeClaim" for a in plan.actions)
    assert any(c["kind"] == "PersistentVolumeClaim" for c in children)
    # a finished job's TTL removes its children but not the state (the final checkpoint)
    j["status"].update(phase="Succeeded", completionTime="2020-01-01T00:00:00Z")
    j["spec"]["ttlSecondsAfterFinished"] = 0
    plan, _, _ = settle(j, wl, children, [])
    deleted = {(a.kind, a.name) for a in plan.actions if a.verb == "delete"}
    assert ("ConfigMap", "j-config") in deleted
    assert not any(k == "PersistentVolumeClaim" for k, _ in deleted)
    # the user's own checkpoint PVC: none is created
    j2 = job(status={"phase": "Queued"}, checkpoint={"pvc": "mine"})
    plan, _, _ = settle(j2, admit(wl_for(j2)))
    assert not any(a.kind == "PersistentVolumeClaim" for a in plan.actions)


def restarted(p_, n):
    p_["status"]["containerStatuses"] = [
        {
            "name": "c",
            "restartCount": n,
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
        }
    ]
    return p_


def test_engine_router_buffer_failures_do_not_stop_the_gang_and_are_counted():
    j, wl, children, pods = running_world()
    pods[2] = restarted(pods[2], 1)  # an engine container restarted by the kubelet
    plan, j, children = settle(j, wl, children, pods)
    assert not any(a.verb == "delete" for a in plan.actions)  # the gang goes on
    assert plan.status["phase"] == "Running" and not plan.status.get("restarts")
    assert plan.status["roleRestarts"] == {"rollout": 1}
    (ev,) = plan.events
    assert ev[:2] == ("Warning", "RoleRestarted") and "exited with code 137" in ev[2]
    assert "rollout restarts: 1" in ev[2]
    # the same observation again: no new Event, no status write
    plan, j, children = settle(j, wl, children, pods)
    assert plan.events == [] and not plan.status_changed
    # that engine pod goes and the operator creates it again (same name, a new pod: the
    # watch kept the old one's restarts): still 1, then the router restarts twice
    failed_engine = pods.pop(2)
    again = pod("j-rollout-0", "rollout")
    again["metadata"]["uid"] = "u-j-rollout-0-again"
    pods.insert(2, again)
    router = next(x for x in pods if x["metadata"]["name"] == "j-router")
    restarted(router, 2)
    plan, j, children = settle(j, wl, children, pods, failed_pods=[failed_engine])
    assert plan.status["roleRestarts"] == {"rollout": 1, "router": 2}
    assert [e[1] for e in plan.events] == ["RoleRestarted"]


def test_engine_restarts_past_max_restarts_fail_the_job_with_the_pods_reason():
    j, wl, children, pods = running_world()
    limit = j["spec"].get("failurePolicy", {}).get("maxRestarts", 3)
    pods[2] = restarted(pods[2], limit)  # at the limit: the gang goes on
    plan, j, children = settle(j, wl, children, pods)
    assert plan.status["phase"] == "Running"
    pods[2] = restarted(pods[2], limit + 1)
    plan, j, children = settle(j, wl, children, pods)
    assert plan.status["phase"] == "Failed"
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "MaxRestartsExceeded"
    assert "exited with code 137" in failed["message"] and "maxRestarts" in failed["message"]
    assert any(a.verb == "delete" for a in plan.actions)  # the gang is stopped


def test_failed_buffer_pod_is_recreated_with_its_volume():
    j, wl, children, pods = running_world()
    buf = next(x for x in pods if x["metadata"]["name"] == "j-buffer")
    buf["status"] = {"phase": "Failed", "reason": "Evicted", "message": "node low on memory"}
    live_buf = next(
        c for c in children if c["kind"] == "Pod" and c["metadata"]["name"] == "j-buffer"
    )
    live_buf["status"] = buf["status"]
    plan, j, children = settle(j, wl, children, pods)
    # only the buffer pod goes: the rest of the gang is left running
    assert [v for v in verbs(plan) if v[0] in ("delete", "apply")] == [
        ("delete", "Pod", "j-buffer")
    ]
    assert plan.status["phase"] == "Admitted" and not plan.restarted  # 6/7 Ready, no restart
    assert not any(a.kind == "PersistentVolumeClaim" and a.verb == "delete" for a in plan.actions)
    reasons = [e[1] for e in plan.events]
    assert "BufferRecreated" in reasons and "RoleRestarted" in reasons
    assert plan.status["roleRestarts"] == {"buffer": 1}
    # gone: the next pass creates it again, same volume
    pods = [x for x in pods if x["metadata"]["name"] != "j-buffer"]
    plan, j, children = settle(j, wl, children, pods, failed_pods=[buf])
    (new,) = [a.body for a in plan.actions if a.kind == "Pod" and a.verb == "apply"]
    assert new["metadata"]["name"] == "j-buffer"
    claims = [v["persistentVolumeClaim"]["claimName"] for v in new["spec"]["volumes"]
              if "persistentVolumeClaim" in v]  # fmt: skip
    assert claims == ["j-state"]
    assert plan.status["roleRestarts"] == {"buffer": 1}  # counted once


def test_ended_engine_pod_is_deleted_then_created_again_and_the_gang_goes_on():
    """No controller replaces the operator's own pods: an engine pod that ended (evicted,
    node lost) is deleted with a PodRecreated Event, and the next pass creates it again."""
    j, wl, children, pods = running_world()
    eng = next(x for x in pods if x["metadata"]["name"] == "j-rollout-1")
    eng["status"] = {"phase": "Failed", "reason": "Evicted", "message": "node low on memory"}
    plan, j, children = settle(j, wl, children, pods)
    # that pod only: no training pod, engine, router or buffer is touched, no gang restart
    assert [v for v in verbs(plan) if v[0] in ("delete", "apply")] == [
        ("delete", "Pod", "j-rollout-1")
    ]
    assert plan.status["phase"] == "Admitted" and not plan.restarted  # 6/7 Ready, no restart
    assert not plan.status.get("restarts")
    recreated = [e for e in plan.events if e[1] == "PodRecreated"]
    assert len(recreated) == 1 and recreated[0][0] == "Warning"
    assert "node low on memory" in recreated[0][2] and "recreating it" in recreated[0][2]
    assert "state volume" not in recreated[0][2]  # an engine keeps none
    assert "BufferRecreated" not in [e[1] for e in plan.events]
    assert plan.status["roleRestarts"] == {"rollout": 1}
    # being deleted: not deleted twice, not applied over
    gone = copy.deepcopy(eng)
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:01Z"
    live = [gone if x is eng else x for x in pods]
    dying = [*children, gone]  # settle dropped the deleted child; it is still terminating
    plan, j, _ = settle(j, wl, dying, live)
    assert not [v for v in verbs(plan) if v[0] in ("delete", "apply")]
    # gone: the next pass creates the same pod again (same name, ordinal and spec)
    pods = [x for x in pods if x is not eng]
    plan, j, children = settle(j, wl, children, pods, failed_pods=[eng])
    (again,) = [a.body for a in plan.actions if a.verb == "apply" and a.kind == "Pod"]
    assert again["metadata"]["name"] == "j-rollout-1"
    assert again["metadata"]["labels"]["rlpost.dev/pod-index"] == "1"
    assert (again["spec"]["hostname"], again["spec"]["subdomain"]) == ("j-rollout-1", "j")
    assert not any(a.verb == "delete" for a in plan.actions)
    assert plan.status["phase"] == "Admitted" and not plan.restarted  # 6/7 Ready, no restart
    assert plan.status["roleRestarts"] == {"rollout": 1}  # counted once
    assert "PodRecreated" not in [e[1] for e in plan.events]


def test_serving_pods_that_ended_together_are_recreated_under_one_event():
    """A lost node ends several serving pods at once. The controller names a pass's Events
    after the job's version and the reason (a retry posts the same name: one Event), so a
    pass says PodRecreated once, naming every pod, or the second would be dropped."""
    j, wl, children, pods = running_world()
    lost = {"j-rollout-0", "j-rollout-2", "j-router"}
    for x in pods:
        if x["metadata"]["name"] in lost:
            x["status"] = {"phase": "Failed", "reason": "NodeLost", "message": "node gone"}
    plan, j, children = settle(j, wl, children, pods)
    assert {v for v in verbs(plan) if v[0] in ("delete", "apply")} == {
        ("delete", "Pod", name) for name in lost
    }
    assert not plan.restarted and not plan.status.get("restarts")
    reasons = [e[1] for e in plan.events]
    assert len(reasons) == len(set(reasons)), plan.events  # one Event per reason
    (ev,) = [e for e in plan.events if e[1] == "PodRecreated"]
    assert ev[0] == "Warning" and ev[2].endswith("; recreating them")
    assert all(f"pod {name} failed (NodeLost" in ev[2] for name in lost), ev
    assert plan.status["roleRestarts"] == {"rollout": 2, "router": 1}
