"""Must-show of the operator issue, against the real control plane (etcd, kube-apiserver,
controller-manager, scheduler, Kueue with webhooks, kwok GPU nodes), the operator run as a
process. Each test has its own namespace, ClusterQueue, LocalQueue `q` and operator.
"""

from __future__ import annotations

import json

import pytest

from e2e.operator.conftest import GPU, job_doc, wait

pytestmark = pytest.mark.cluster


# ---------------------------------------------------------------------------- helpers


def get(cluster, kind, name, ns):
    return cluster.get_json(kind, name, "-n", ns)


def maybe(cluster, kind, name, ns):
    proc = cluster.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def items(cluster, kind, ns, selector=None):
    args = ["get", kind, "-n", ns, "-o", "json"]
    if selector:
        args += ["-l", selector]
    return json.loads(cluster.kubectl(*args).stdout)["items"]


def cond(obj, ctype):
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return c
    return None


def phase_is(cluster, name, ns, *phases):
    def check():
        j = get(cluster, "rljob", name, ns)
        return (j.get("status") or {}).get("phase") in phases and j

    return check


def wait_phase(cluster, name, ns, *phases, timeout=90):
    return wait(cluster, f"{name} in {phases}", phase_is(cluster, name, ns, *phases), timeout)


def pods_of(cluster, name, ns):
    return items(cluster, "pods", ns, f"app.kubernetes.io/instance={name}")


def submit(cluster, doc):
    cluster.apply(doc)
    return doc["metadata"]["name"]


def workloads(cluster, ns):
    return items(cluster, "workloads", ns)


# ---------------------------------------------------------------------------- 1, 2


@pytest.mark.gpus(16, "b")
def test_1_disaggregated_admitted_on_flavor_and_running(cluster, op, namespace, op_suite):
    ns = namespace
    submit(
        cluster,
        job_doc(
            "dis",
            ns,
            trainer={"replicas": 2, "gpusPerPod": 4},
            rollout={"engines": 2, "gpusPerEngine": 2},
        ),
    )
    wl = wait(cluster, "Workload", lambda: workloads(cluster, ns)[0], 30)
    assert wl["metadata"]["ownerReferences"][0]["kind"] == "RLPostTrainJob"
    assert wl["metadata"]["ownerReferences"][0]["controller"] is True
    sets = {ps["name"]: ps for ps in wl["spec"]["podSets"]}
    assert list(sets) == ["trainer", "rollout", "router", "buffer"]
    req = {
        n: ps["template"]["spec"]["containers"][0]["resources"]["requests"]
        for n, ps in sets.items()
    }
    assert (sets["trainer"]["count"], req["trainer"][GPU]) == (2, "4")
    assert (sets["rollout"]["count"], req["rollout"][GPU]) == (2, "2")
    assert GPU not in req["router"] and GPU not in req["buffer"]
    job = wait_phase(cluster, "dis", ns, "Running", timeout=120)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "q"
    assert job["status"]["admission"]["flavors"]["trainer"] == op_suite.flavor_b
    assert cond(job, "Admitted")["status"] == "True"
    assert cond(job, "Running")["status"] == "True"
    # the gang is the operator's own pods (no StatefulSet or Deployment in between), each
    # with a stable name; a pod's hostname and subdomain (the job's one headless Service)
    # make dis-trainer-<i>.dis resolvable, the rendezvous address
    for i in range(2):
        trainer = get(cluster, "pod", f"dis-trainer-{i}", ns)
        tmpl = trainer["spec"]
        assert tmpl["nodeSelector"] == {"rlpost.dev/gpu-kind": "b"}
        assert {
            "key": "rlpost.dev/gpu-kind",
            "operator": "Equal",
            "value": "b",
            "effect": "NoSchedule",
        } in tmpl["tolerations"]
        assert (tmpl["hostname"], tmpl["subdomain"]) == (f"dis-trainer-{i}", "dis")
        assert trainer["metadata"]["labels"]["rlpost.dev/pod-index"] == str(i)
        owner = trainer["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "RLPostTrainJob" and owner["controller"] is True
    # one Service for the job: headless, naming every pod
    assert [x["metadata"]["name"] for x in items(cluster, "services", ns)] == ["dis"]
    assert get(cluster, "service", "dis", ns)["spec"]["clusterIP"] == "None"

    gang = ["dis-buffer", "dis-rollout-0", "dis-rollout-1", "dis-router"]
    gang += ["dis-trainer-0", "dis-trainer-1"]

    def dns_names():  # what the cluster DNS serves under the headless Service
        slices = items(cluster, "endpointslices", ns, "kubernetes.io/service-name=dis")
        return sorted(e.get("hostname", "") for s in slices for e in s.get("endpoints") or [])

    wait(
        cluster,
        "<pod>.dis published for every pod of the gang",
        lambda: dns_names() == gang,
        30,
    )
    assert not items(cluster, "statefulsets,deployments,replicasets", ns)
    pods = pods_of(cluster, "dis", ns)
    names = sorted(p["metadata"]["name"] for p in pods)
    assert names == gang
    for p in pods:
        assert p["status"]["phase"] == "Running"
        assert p["metadata"]["labels"]["kueue.x-k8s.io/podset"] in sets
        if p["metadata"]["labels"]["rlpost.dev/role"] in ("trainer", "rollout"):
            assert p["spec"]["nodeName"].startswith("gpu-b-"), p["spec"]["nodeName"]
    # wiring: token Secret referenced, never copied into status or events
    secret = get(cluster, "secret", "dis-token", ns)
    token = __import__("base64").b64decode(secret["data"]["token"]).decode()
    assert len(token) >= 32
    assert token not in json.dumps(get(cluster, "rljob", "dis", ns))
    assert token not in cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout
    assert token not in op.log.read_text()
    role = get(cluster, "role", "dis-rlpost", ns)
    assert any(r.get("resourceNames") == ["dis-progress"] for r in role["rules"])
    # job traffic: ingress to the job's pods only from the job's own pods
    policy = get(cluster, "networkpolicy", "dis-intra-job", ns)
    own = {"app.kubernetes.io/name": "rlpost", "app.kubernetes.io/instance": "dis"}
    assert policy["spec"]["podSelector"]["matchLabels"] == own
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": own}}]}]
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "RLPostTrainJob"
    events = cluster.kubectl(
        "get", "events", "-n", ns, "--field-selector", "involvedObject.name=dis", "-o", "json"
    ).stdout
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"Queued", "Admitted", "Running"} <= reasons or {"Admitted", "Running"} <= reasons
    cols = cluster.kubectl("get", "rljob", "dis", "-n", ns).stdout
    assert "MODE" in cols and "Running" in cols and "disaggregated" in cols
    # /metrics: the job counted by phase
    assert f'rlpost_jobs{{namespace="{ns}",phase="Running"}} 1.0' in op.metrics_text()


def test_2_colocated_on_several_gpu_pods_is_refused_before_admission(cluster, op, namespace):
    ns = namespace
    submit(cluster, job_doc("col", ns, mode="colocated", trainer={"replicas": 2, "gpusPerPod": 4}))
    job = wait_phase(cluster, "col", ns, "Invalid", timeout=60)
    c = cond(job, "InvalidSpec")
    # One CPU worker pod runs colocated in a cluster (e2e/incluster/test_colocated_in_cluster.py).
    assert c["status"] == "True" and "set trainer.replicas to 1 (it is 2)" in c["message"]
    assert "runs on the CPU only for now" in c["message"]
    # Nothing half-created: no Workload (no quota taken), no pods.
    assert workloads(cluster, ns) == []
    assert pods_of(cluster, "col", ns) == []


# ---------------------------------------------------------------------------- 3, 4


@pytest.mark.gpus(8, "a")
def test_3_second_job_queued_with_kueue_message_until_first_deleted(cluster, op, namespace):
    ns = namespace
    small = {
        "trainer": {"replicas": 1, "gpusPerPod": 6},
        "rollout": {"engines": 1, "gpusPerEngine": 2},
    }
    submit(cluster, job_doc("first", ns, **small))
    wait_phase(cluster, "first", ns, "Running", timeout=120)
    submit(cluster, job_doc("second", ns, **small))

    def queued_with_message():
        j = get(cluster, "rljob", "second", ns)
        c = cond(j, "Queued")
        return j["status"].get("phase") == "Queued" and c and "insufficient" in c["message"] and c

    c = wait(cluster, "second Queued with Kueue's reason", queued_with_message, 60)
    assert GPU in c["message"] and c["status"] == "True"
    assert not pods_of(cluster, "second", ns)
    cluster.kubectl("delete", "rljob", "first", "-n", ns, "--wait=true", timeout=60)
    job = wait_phase(cluster, "second", ns, "Running", timeout=120)
    assert cond(job, "Queued")["status"] == "False"
    wait(cluster, "first's pods gone", lambda: not pods_of(cluster, "first", ns), 60)
    assert len(workloads(cluster, ns)) == 1  # first's Workload went with it (finalizer)


@pytest.mark.gpus(8, "a")
def test_4_preemption_suspends_victim_and_resumes_from_checkpoint(cluster, op, namespace, op_suite):
    ns = namespace
    size = {
        "trainer": {"replicas": 1, "gpusPerPod": 6},
        "rollout": {"engines": 1, "gpusPerEngine": 2},
    }
    submit(cluster, job_doc("low", ns, priorityClassName=op_suite.low, **size))
    wait_phase(cluster, "low", ns, "Running", timeout=120)
    cluster.kubectl(
        "patch",
        "configmap",
        "low-progress",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"data": {"step": "25", "weightVersion": "25", "lastCheckpointStep": "20"}}),
    )
    wait(
        cluster,
        "progress mirrored",
        lambda: get(cluster, "rljob", "low", ns)["status"].get("lastCheckpointStep") == 20,
        30,
    )
    submit(cluster, job_doc("high", ns, priorityClassName=op_suite.high, **size))
    low = wait_phase(cluster, "low", ns, "Suspended", timeout=90)
    sus = cond(low, "Suspended")
    assert sus["status"] == "True" and sus["reason"] == "Preempted", sus
    wait(cluster, "victim's pods gone", lambda: not pods_of(cluster, "low", ns), 60)
    high = wait_phase(cluster, "high", ns, "Running", timeout=120)
    assert high["status"]["phase"] == "Running"
    wl_low = next(w for w in workloads(cluster, ns) if w["metadata"]["name"].endswith("-low"))
    assert not (wl_low.get("status") or {}).get("admission")  # quota reservation cleared
    assert cond(wl_low, "Requeued")["status"] == "True"
    assert get(cluster, "rljob", "low", ns)["status"]["phase"] == "Suspended"
    cluster.kubectl("delete", "rljob", "high", "-n", ns, "--wait=true", timeout=60)
    low = wait_phase(cluster, "low", ns, "Running", timeout=120)
    assert low["status"]["resumeStep"] == 20
    trainer = get(cluster, "pod", "low-trainer-0", ns)
    env = {e["name"]: e.get("value") for e in trainer["spec"]["containers"][0]["env"]}
    assert env["RLPOST_RESUME_STEP"] == "20"
    assert trainer["metadata"]["annotations"]["rlpost.dev/resume-step"] == "20"
    assert get(cluster, "configmap", "low-config", ns)["data"]["resume-step"] == "20"
    assert "rlpost_job_evictions_total 1.0" in op.metrics_text()


# ---------------------------------------------------------------------------- 5, 6


def test_5_suspend_round_trip(cluster, op, namespace):
    ns = namespace
    submit(cluster, job_doc("sus", ns))
    wait_phase(cluster, "sus", ns, "Running", timeout=120)
    cluster.kubectl(
        "patch", "rljob", "sus", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    job = wait_phase(cluster, "sus", ns, "Suspended", timeout=60)
    assert cond(job, "Suspended")["reason"] in ("SuspendedByUser", "Deactivated")
    wait(cluster, "pods gone", lambda: not pods_of(cluster, "sus", ns), 60)

    def released():
        (wl,) = workloads(cluster, ns)
        return wl["spec"]["active"] is False and not (wl.get("status") or {}).get("admission")

    wait(cluster, "Workload deactivated and quota released", released, 60)

    def no_gpus_in_use():  # (Kueue updates the ClusterQueue's usage on its own schedule;
        # only the GPU total is an integer: cpu may read "4500m")
        cq = get(cluster, "clusterqueue", ns, ns)
        return all(
            r["name"] != GPU or int(r.get("total", 0)) == 0
            for f in cq["status"].get("flavorsUsage", [])
            for r in f["resources"]
        )

    wait(cluster, "the ClusterQueue's GPU usage back to 0", no_gpus_in_use, 30)
    cluster.kubectl(
        "patch", "rljob", "sus", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    job = wait_phase(cluster, "sus", ns, "Running", timeout=120)
    assert cond(job, "Suspended")["status"] == "False"
    wait(cluster, "the 6 pods back", lambda: len(pods_of(cluster, "sus", ns)) == 6, 30)


def fail_pod(cluster, ns, pod):
    cluster.kubectl(
        "patch",
        "pod",
        pod,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(
            {"status": {"phase": "Failed", "reason": "Error", "message": "trainer exited 1"}}
        ),
    )


def test_6_trainer_failure_restarts_then_fails_past_max_restarts(cluster, op, namespace):
    ns = namespace
    submit(cluster, job_doc("fl", ns, failurePolicy={"maxRestarts": 1}))
    wait_phase(cluster, "fl", ns, "Running", timeout=120)
    cluster.kubectl(
        "patch",
        "configmap",
        "fl-progress",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"data": {"step": "12", "lastCheckpointStep": "10"}}),
    )
    wait(
        cluster,
        "progress mirrored",
        lambda: get(cluster, "rljob", "fl", ns)["status"].get("lastCheckpointStep") == 10,
        30,
    )
    fail_pod(cluster, ns, "fl-trainer-0")

    def restarted_and_running():
        j = get(cluster, "rljob", "fl", ns)
        return j["status"].get("restarts") == 1 and j["status"]["phase"] == "Running" and j

    job = wait(cluster, "restart counted and Running again", restarted_and_running, 120)
    assert job["status"]["resumeStep"] == 10
    pods = pods_of(cluster, "fl", ns)
    assert {p["metadata"]["labels"]["rlpost.dev/attempt"] for p in pods} == {"1"}
    env = {
        e["name"]: e.get("value")
        for e in get(cluster, "pod", "fl-trainer-0", ns)["spec"]["containers"][0]["env"]
    }
    assert env["RLPOST_RESUME_STEP"] == "10"
    fail_pod(cluster, ns, "fl-trainer-1")
    job = wait_phase(cluster, "fl", ns, "Failed", timeout=90)
    failed = cond(job, "Failed")
    assert failed["reason"] == "MaxRestartsExceeded" and "fl-trainer-1" in failed["message"]
    assert "maxRestarts is 1" in failed["message"]

    def finished():
        (wl,) = workloads(cluster, ns)
        c = cond(wl, "Finished")
        return c and c["status"] == "True" and not wl["metadata"].get("finalizers") and wl

    wl = wait(cluster, "Workload Finished, finalizer released", finished, 60)
    assert cond(wl, "Finished")["reason"] == "Failed"
    wait(cluster, "gang stopped", lambda: not pods_of(cluster, "fl", ns), 60)
    assert "rlpost_job_restarts_total 1.0" in op.metrics_text()


def test_6a_ended_engine_pod_is_recreated_and_the_gang_goes_on(cluster, op, namespace):
    """No controller replaces the operator's own pods: an engine pod that ended (here Failed,
    as an eviction leaves it) is deleted by the operator with a PodRecreated Event and created
    again under the same name; the gang is not restarted."""
    ns = namespace
    submit(cluster, job_doc("eng", ns))
    wait_phase(cluster, "eng", ns, "Running", timeout=120)
    old = get(cluster, "pod", "eng-rollout-1", ns)["metadata"]["uid"]
    others = {
        p["metadata"]["name"]: p["metadata"]["uid"]
        for p in pods_of(cluster, "eng", ns)
        if p["metadata"]["name"] != "eng-rollout-1"
    }
    fail_pod(cluster, ns, "eng-rollout-1")

    def recreated():
        p = maybe(cluster, "pod", "eng-rollout-1", ns)
        return p and p["metadata"]["uid"] != old and "deletionTimestamp" not in p["metadata"] and p

    pod = wait(cluster, "eng-rollout-1 created again", recreated, 60)
    assert pod["metadata"]["labels"]["rlpost.dev/pod-index"] == "1"
    assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == ("eng-rollout-1", "eng")
    assert pod["metadata"]["labels"]["rlpost.dev/attempt"] == "0"  # the same gang
    job = wait_phase(cluster, "eng", ns, "Running", timeout=60)
    assert not job["status"].get("restarts")
    assert job["status"]["roleRestarts"] == {"rollout": 1}
    # the rest of the gang was left running: the same pods
    now = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods_of(cluster, "eng", ns)}
    assert {n: u for n, u in now.items() if n != "eng-rollout-1"} == others
    evs = json.loads(
        cluster.kubectl(
            "get", "events", "-n", ns, "--field-selector", "involvedObject.name=eng", "-o", "json"
        ).stdout
    )["items"]
    (ev,) = [e for e in evs if e["reason"] == "PodRecreated"]
    assert ev["type"] == "Warning" and "eng-rollout-1" in ev["message"], ev


def test_6b_done_succeeds_finishes_workload_and_ttl_removes_children(cluster, op, namespace):
    ns = namespace
    submit(cluster, job_doc("ok", ns, steps=30, ttlSecondsAfterFinished=3))
    wait_phase(cluster, "ok", ns, "Running", timeout=120)
    cluster.kubectl(
        "patch",
        "configmap",
        "ok-progress",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps(
            {
                "data": {
                    "step": "30",
                    "weightVersion": "30",
                    "lastCheckpointStep": "30",
                    "done": "true",
                }
            }
        ),
    )
    job = wait_phase(cluster, "ok", ns, "Succeeded", timeout=60)
    assert job["status"]["step"] == 30 and cond(job, "Succeeded")["status"] == "True"

    def finished():
        (wl,) = workloads(cluster, ns)
        c = cond(wl, "Finished")
        return c and c["status"] == "True" and not wl["metadata"].get("finalizers")

    wait(cluster, "Workload Finished(Succeeded), finalizer released", finished, 60)
    wait(
        cluster,
        "children removed after the TTL",
        lambda: (
            maybe(cluster, "configmap", "ok-config", ns) is None
            and maybe(cluster, "service", "ok-router", ns) is None
            and not pods_of(cluster, "ok", ns)
        ),
        60,
    )
    assert get(cluster, "rljob", "ok", ns)["status"]["phase"] == "Succeeded"
