"""Issue 13: nothing silent after admission. One test per class of failure, against the real
control plane with the operator as a process: the job's phase/condition/Event says what to
fix within 30 s, the quota comes back (ClusterQueue usage as before the job) when the job
cannot proceed, nothing is left half-created, and the operator does not loop on writes.
Plus a fuzz of valid specs (hypothesis): every job settles in a truthful state, and the
operator logs no traceback.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2e.operator.conftest import GPU, job_doc, wait
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
from rlpost import api

NONE_FITS = r"cannot be scheduled: 0/\d+ nodes are available"

pytestmark = pytest.mark.cluster


# ---------------------------------------------------------------------------- helpers


def gpu_reserved(cluster, ns) -> int:
    """GPUs the test's ClusterQueue has reserved or in use (what the job holds)."""
    cq = get(cluster, "clusterqueue", ns, ns)
    total = 0
    for key in ("flavorsReservation", "flavorsUsage"):
        for f in (cq.get("status") or {}).get(key) or []:
            for r in f.get("resources") or []:
                if r["name"] == GPU:
                    total = max(total, int(r.get("total", 0)))
    return total


def events_for(cluster, ns, name) -> list[dict]:
    out = cluster.kubectl(
        "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}", "-o", "json"
    ).stdout
    return json.loads(out)["items"]


def children(cluster, ns, name) -> list[str]:
    kinds = "pods,services,configmaps,secrets,roles,networkpolicies"
    objs = items(cluster, kinds, ns, f"app.kubernetes.io/instance={name}")
    return [f"{o['kind']}/{o['metadata']['name']}" for o in objs]


def writes_over(op, seconds: float) -> float:
    before = op.writes()
    time.sleep(seconds)
    return op.writes() - before


TRAINER_POD = (
    "has(object.metadata.labels) && 'rlpost.dev/role' in object.metadata.labels && "
    "object.metadata.labels['rlpost.dev/role'] == 'trainer'"
)


def deny_trainer_pods(cluster, ns) -> str:
    """A ValidatingAdmissionPolicy that refuses trainer pods in `ns` (a platform policy the
    job's children run into: the API server answers 422 with the policy's message)."""
    name = f"deny-trainer-{ns}"
    cluster.apply(
        [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": name},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {
                        "resourceRules": [
                            {
                                "apiGroups": [""],
                                "apiVersions": ["v1"],
                                "operations": ["CREATE", "UPDATE"],
                                "resources": ["pods"],
                            }
                        ]
                    },
                    "matchConditions": [{"name": "trainer-pods", "expression": TRAINER_POD}],
                    "validations": [
                        {
                            "expression": "false",
                            "message": "trainer pods are not allowed in this namespace",
                            "reason": "Invalid",
                        }
                    ],
                },
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name},
                "spec": {
                    "policyName": name,
                    "validationActions": ["Deny"],
                    "matchResources": {
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}
                    },
                },
            },
        ]
    )
    probe = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "namespace": ns, "labels": {"rlpost.dev/role": "trainer"}},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }

    def denied():
        proc = cluster.kubectl(
            "create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False
        )
        return proc.returncode != 0 and "not allowed" in proc.stderr

    wait(cluster, "the policy is in force", denied, 30)
    return name


# ---------------------------------------------------------------------------- classes


def test_child_refused_by_the_api_server_fails_the_job_and_returns_quota(cluster, op, namespace):
    ns = namespace
    policy = deny_trainer_pods(cluster, ns)
    try:
        assert gpu_reserved(cluster, ns) == 0
        submit(cluster, job_doc("refused", ns))
        wait(
            cluster,
            "admitted",
            lambda: cond(workloads(cluster, ns)[0], "Admitted") if workloads(cluster, ns) else None,
            60,
        )
        job = wait_phase(cluster, "refused", ns, "Failed", timeout=30)
        failed = cond(job, "Failed")
        assert failed["reason"] == "ChildRejected", failed
        # the gang is the operator's own pods: the refusal names the trainer pod itself
        assert re.search(r"refused Pod refused-trainer-[01] \(HTTP 422\)", failed["message"])
        assert "trainer pods are not allowed in this namespace" in failed["message"]
        assert "waits for Kueue" not in json.dumps(job["status"])
        evs = [e for e in events_for(cluster, ns, "refused") if e["reason"] == "ChildRejected"]
        assert evs and evs[0]["type"] == "Warning" and "not allowed" in evs[0]["message"]
        # quota back: the Workload is Finished and the ClusterQueue holds nothing
        wait(
            cluster,
            "Workload Finished",
            lambda: (cond(workloads(cluster, ns)[0], "Finished") or {}).get("status") == "True",
            30,
        )
        wait(cluster, "quota released", lambda: gpu_reserved(cluster, ns) == 0, 30)
        # nothing half-created
        wait(cluster, "children removed", lambda: not children(cluster, ns, "refused"), 30)
        # no hot loop: a failed job is quiet
        assert writes_over(op, 60) == 0, op.metrics_text()
        assert 'rlpost_child_writes_refused_total{kind="Pod",retryable="False"}' in (
            op.metrics_text()
        )
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding", policy, check=False)
        cluster.kubectl("delete", "validatingadmissionpolicy", policy, check=False)


def test_what_can_be_known_is_refused_before_admission(cluster, op, namespace):
    ns = namespace
    # a name whose children would overflow the 63-character label limit: the API server
    long = "n" * (api.MAX_JOB_NAME + 1)
    proc = cluster.kubectl("apply", "-f", "-", input=json.dumps(job_doc(long, ns)), check=False)
    assert proc.returncode != 0 and f"at most {api.MAX_JOB_NAME} characters" in proc.stderr
    ok = "n" * api.MAX_JOB_NAME
    # a pod larger than every node the queue's flavors can use; a config over 1 MiB
    submit(cluster, job_doc("huge-pod", ns, trainer={"replicas": 1, "gpusPerPod": 16}))
    blob = "x" * (1024 * 1024 + 10)
    submit(cluster, job_doc("huge-config", ns, model={"config": {"hidden_size": 8, "blob": blob}}))
    submit(
        cluster,
        job_doc(
            "bad-reward",
            ns,
            reward={"type": "custom", "function": "rlpost_rollout.rewards.builtin:exact_matc"},
        ),
    )
    submit(cluster, job_doc(ok, ns, trainer={"replicas": 1, "gpusPerPod": 2}))
    says = {
        "huge-pod": "can never be scheduled: trainer pods request 16 nvidia.com/gpu each",
        "huge-config": "over the API server's limit of 1048576 bytes",
        "bad-reward": "has no function 'exact_matc'",
    }
    for name, text in says.items():
        job = wait_phase(cluster, name, ns, "Invalid", timeout=30)
        c = cond(job, "InvalidSpec")
        assert c["status"] == "True" and text in c["message"], c
        assert any(e["reason"] == "InvalidSpec" for e in events_for(cluster, ns, name))
    assert (
        "set trainer.gpusPerPod to at most 8"
        in cond(get(cluster, "rljob", "huge-pod", ns), "InvalidSpec")["message"]
    )
    # the longest allowed name runs
    wait_phase(cluster, ok, ns, "Running", timeout=120)
    # its longest child name, a pod's name and hostname, is a DNS label (at most 63)
    trainer = get(cluster, "pod", f"{ok}-trainer-0", ns)
    assert trainer["spec"]["hostname"] == f"{ok}-trainer-0"
    assert trainer["spec"]["subdomain"] == ok  # the job's headless Service
    for name in says:
        assert not children(cluster, ns, name), name
    assert [w["metadata"]["name"] for w in workloads(cluster, ns)] == [f"rlposttrainjob-{ok}"]


@pytest.mark.gpus(16, "a")
def test_unschedulable_gang_says_why_and_gives_its_quota_back(cluster, op, namespace):
    """GPU fragmentation: 3 trainer pods of 5 GPUs fit the quota (16) but not the nodes
    (2 x 8): the scheduler's reason reaches the job, then the gang gives the quota back."""
    ns = namespace
    assert gpu_reserved(cluster, ns) == 0
    doc = job_doc(
        "frag",
        ns,
        trainer={"replicas": 3, "gpusPerPod": 5},
        rollout={"engines": 1, "gpusPerEngine": 1},
        failurePolicy={"podsReadyTimeoutSeconds": 40},
    )
    submit(cluster, doc)

    def unschedulable():
        j = get(cluster, "rljob", "frag", ns)
        c = cond(j, "Running") or {}
        # (first, for a moment, the state PVC may still be unbound)
        return c.get("reason") == "Unschedulable" and "Insufficient" in c["message"] and j

    job = wait(cluster, "the scheduler's reason on the job", unschedulable, 30)
    msg = cond(job, "Running")["message"]
    # (0/N: N counts the kwok nodes and, when it is up, the tainted real node)
    assert re.search(NONE_FITS, msg) and "Insufficient" in msg, msg
    # held while it waits (Kueue writes the ClusterQueue's usage a moment after admission)
    wait(cluster, "the gang's 16 GPUs reserved", lambda: gpu_reserved(cluster, ns) == 16, 15)
    evs = [e for e in events_for(cluster, ns, "frag") if e["reason"] == "Unschedulable"]
    assert evs and re.search(NONE_FITS, evs[0]["message"])
    # bounded writes while it waits (no loop on the pending pod)
    assert writes_over(op, 10) <= 2
    # past podsReadyTimeoutSeconds: Suspended with the reason, the quota released
    job = wait_phase(cluster, "frag", ns, "Suspended", timeout=60)
    sus = cond(job, "Suspended")
    assert sus["reason"] == "PodsReadyTimeout" and re.search(NONE_FITS, sus["message"])
    assert "quota given back" in sus["message"]
    assert job["status"]["podsReadyRequeues"] == 1 and job["status"].get("requeueAt")
    assert "admission" not in job["status"]
    wait(cluster, "quota released", lambda: gpu_reserved(cluster, ns) == 0, 30)
    wait(cluster, "gang gone", lambda: not pods_of(cluster, "frag", ns), 30)
    (wl,) = workloads(cluster, ns)
    assert wl["spec"]["active"] is False and not (wl.get("status") or {}).get("admission")
    assert any(e["reason"] == "PodsReadyTimeout" for e in events_for(cluster, ns, "frag"))
    assert writes_over(op, 20) == 0  # quiet during the backoff
    assert "rlpost_pods_ready_timeouts_total 1.0" in op.metrics_text()


def buffer_refuses_spec(cluster, ns, pod, message):
    """What kubelet reports for a buffer that exited 78 with a termination message."""
    status = {
        "containerStatuses": [
            {
                "name": "buffer",
                "image": "x",
                "imageID": "",
                "ready": False,
                "restartCount": 1,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {
                    "terminated": {
                        "exitCode": 78,
                        "reason": "Error",
                        "message": message,
                        "startedAt": "2026-01-01T00:00:00Z",
                        "finishedAt": "2026-01-01T00:00:01Z",
                    }
                },
            }
        ]
    }
    cluster.kubectl(
        "patch",
        "pod",
        pod,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def test_custom_function_refused_at_start_fails_without_restarts(cluster, op, namespace):
    ns = namespace
    doc = job_doc("cf", ns, reward={"type": "custom", "function": "mycompany.rewards:score"})
    submit(cluster, doc)
    wait_phase(cluster, "cf", ns, "Running", "Admitted", timeout=120)
    wait(cluster, "buffer pod", lambda: maybe(cluster, "pod", "cf-buffer", ns), 60)
    why = "reward.function 'mycompany.rewards:score': cannot import 'mycompany.rewards'"
    buffer_refuses_spec(cluster, ns, "cf-buffer", why)
    job = wait_phase(cluster, "cf", ns, "Failed", timeout=30)
    assert cond(job, "Failed")["reason"] == "InvalidSpec"
    assert why in cond(job, "InvalidSpec")["message"]
    assert not job["status"].get("restarts")
    assert any(e["reason"] == "InvalidSpec" for e in events_for(cluster, ns, "cf"))
    wait(cluster, "quota released", lambda: gpu_reserved(cluster, ns) == 0, 30)
    wait(cluster, "gang gone", lambda: not pods_of(cluster, "cf", ns), 30)
    assert writes_over(op, 10) == 0


# ---------------------------------------------------------------------------- fuzz


def truthful(job: dict) -> str | None:
    """None when the job's phase is a settled one and its conditions say so; else why not."""
    st = job.get("status") or {}
    phase = st.get("phase")
    if phase == "Running":
        ready, expected = st["readyPods"].split("/")
        ok = ready == expected and cond(job, "Running")["status"] == "True"
        return None if ok else f"Running with readyPods {st['readyPods']}"
    if phase == "Invalid":
        c = cond(job, "InvalidSpec")
        return None if c and c["status"] == "True" and c["message"] else "Invalid, no message"
    if phase == "Failed":
        c = cond(job, "Failed")
        return None if c and c["message"] else "Failed, no message"
    if phase == "Queued":
        c = cond(job, "Queued") or {}
        # Kueue's own reason (e.g. "insufficient quota ..."), never a bare wait
        return None if "insufficient" in c.get("message", "") else f"Queued: {c}"
    if phase == "Suspended":
        c = cond(job, "Suspended") or {}
        return None if c.get("reason") == "PodsReadyTimeout" else f"Suspended: {c}"
    return f"phase {phase}"


names = st.from_regex(r"[a-z][a-z0-9-]{0,42}[a-z0-9]", fullmatch=True).filter(
    lambda n: "--" not in n
)


@st.composite
def specs(draw):
    colocated = draw(st.booleans())
    trainer = {
        "replicas": draw(st.integers(1, 3)),
        "gpusPerPod": draw(st.integers(0, 12)),
        "resources": {"cpu": "1", "memory": "1Gi"},
    }
    spec = {
        "trainer": trainer,
        "rollout": {
            "engines": draw(st.integers(1, 3)),
            "gpusPerEngine": draw(st.integers(0, 10)),
            "engine": "reference",
            "resources": {"cpu": "1", "memory": "1Gi"},
        },
        "failurePolicy": {"podsReadyTimeoutSeconds": 15, "podsReadyRequeueLimit": 3},
        "steps": draw(st.integers(1, 10_000_000)),
        "algorithm": {
            "groupSize": draw(st.integers(2, 1024)),
            "rolloutBatchSize": draw(st.integers(1, 2048)),
        },
    }
    if colocated:
        spec["mode"] = "colocated"
    return spec


@pytest.mark.gpus(16, "a")
def test_fuzz_valid_specs_settle_truthfully_without_tracebacks(cluster, op, namespace):
    ns = namespace
    seen: list[str] = []

    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(name=names, spec=specs())
    def one(name, spec):
        if name in seen:
            return
        seen.append(name)
        submit(cluster, job_doc(name, ns, **spec))

        last: dict = {}

        def settled():
            last["job"] = get(cluster, "rljob", name, ns)
            return truthful(last["job"]) is None

        try:
            wait(cluster, f"{name} settles in a truthful state", settled, 90)
        except Exception as exc:  # say where it stopped
            job = last.get("job") or {}
            raise AssertionError((truthful(job), job.get("status"), spec)) from exc
        job = last["job"]
        assert truthful(job) is None, (truthful(job), job["status"], spec)
        cluster.kubectl("delete", "rljob", name, "-n", ns, "--wait=true", timeout=90)
        wait(cluster, f"{name} gone", lambda: not pods_of(cluster, name, ns), 60)

    one()
    log = op.log.read_text()
    assert "Traceback" not in log, op.log_tail()
    wait(cluster, "quota back to zero", lambda: gpu_reserved(cluster, ns) == 0, 30)
