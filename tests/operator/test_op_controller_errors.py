"""The controller with a fake API: a refused child write is remembered for the protocol, the
status of the pass is written anyway (no false "waits for Kueue"), a non-retryable refusal
fails the job on the next pass and the retries stop (no hot loop)."""

from __future__ import annotations

import copy
import json

import pytest
from operator_helpers import FLAVORS, admit, job, stored
from rlpost_operator import builders as b
from rlpost_operator import protocol as p
from rlpost_operator.controller import Controller
from rlpost_operator.kube import ApiError
from rlpost_operator.writes import GANG_FOLLOW_UP_S

from rlpost import api

REF = b.JobRef("j", "ns", "uid-1")
REFUSAL = json.dumps(
    {"kind": "Status", "message": 'Pod "j-trainer-0" is invalid: denied by policy'}
)


class FakeKube:
    """Stores what is written; refuses the first trainer pod (its create or apply) with `code`."""

    def __init__(self, code: int):
        self.code = code
        self.writes: list[tuple[str, str, str]] = []
        self.status: dict | None = None

    def apply(self, obj, ns):
        self.writes.append(("apply", obj["kind"], obj["metadata"]["name"]))
        if (obj["kind"], obj["metadata"]["name"]) == ("Pod", "j-trainer-0"):
            raise ApiError(self.code, REFUSAL)
        return stored(obj)

    def create(self, obj, ns):
        self.writes.append(("create", obj["kind"], obj["metadata"]["name"]))
        if (obj["kind"], obj["metadata"]["name"]) == ("Pod", "j-trainer-0"):
            raise ApiError(self.code, REFUSAL)
        return stored(obj)

    def delete(self, kind, ns, name):
        self.writes.append(("delete", kind, name))

    def merge_patch(self, kind, ns, name, patch, status=False):
        self.writes.append(("patch_status" if status else "patch", kind, name))
        if kind == api.KIND and status:
            self.status = patch["status"]
            return None
        return None

    def event(self, *args):
        self.writes.append(("event", args[2], ""))

    def get(self, kind, ns, name):
        if kind == "Namespace":  # the job's namespace exists and is not being deleted
            return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        return None

    def list(self, *args):
        return []


def admitted(ctl, j):
    """Cache the job and its Workload, admitted."""
    ctl.cache.put_job(j)
    wl = admit(
        stored(b.build_workload(REF, api.RLPostTrainJobSpec.model_validate(j["spec"]), "team-a"))
    )
    wl["metadata"]["labels"] = b.labels("j")
    ctl.cache.put("Workload", wl)
    ctl.cache.flavors = FLAVORS


def controller(code):
    kube = FakeKube(code)
    ctl = Controller(kube, ["ns"])
    admitted(ctl, job(status={"phase": "Queued"}))
    return ctl, kube


@pytest.mark.asyncio
async def test_non_retryable_refusal_writes_status_then_fails_the_job():
    ctl, kube = controller(422)
    key = ("ns", "j")
    delay = await ctl.reconcile(key)
    # the status of the pass was written although the trainer pod was refused
    assert kube.status["phase"] == "Admitted"
    assert "waits for Kueue" not in json.dumps(kube.status)
    assert delay == 0.05  # at once: the next pass decides
    (err,) = ctl.child_errors[key].values()
    assert (err.kind, err.name, err.code, err.retryable) == ("Pod", "j-trainer-0", 422, False)
    assert err.message.endswith("denied by policy")
    job2 = copy.deepcopy(ctl.cache.jobs[key])
    job2["status"] = kube.status
    job2["metadata"]["resourceVersion"] = "11"
    ctl.cache.put_job(job2)
    kube.writes.clear()
    await ctl.reconcile(key)
    assert kube.status["phase"] == "Failed"
    failed = next(c for c in kube.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == p.CHILD_REJECTED and "denied by policy" in failed["message"]
    # no retry of the refused write
    assert not [w for w in kube.writes if w[0] in ("apply", "create")]


@pytest.mark.asyncio
async def test_retryable_refusal_backs_off_and_shows_a_condition():
    ctl, kube = controller(503)
    key = ("ns", "j")
    with pytest.raises(ApiError):
        await ctl.reconcile(key)  # the worker retries with backoff
    assert kube.status["phase"] == "Admitted"
    job2 = copy.deepcopy(ctl.cache.jobs[key])
    job2["status"] = kube.status
    job2["metadata"]["resourceVersion"] = "11"
    ctl.cache.put_job(job2)
    with pytest.raises(ApiError):
        await ctl.reconcile(key)
    c = next(c for c in kube.status["conditions"] if c["type"] == "ChildrenApplied")
    assert c["status"] == "False" and "HTTP 503" in c["message"]


class RecordingKube(FakeKube):
    """Accepts everything; a create of an object named in `exists` answers 409."""

    def __init__(self, exists=()):
        super().__init__(0)
        self.exists = set(exists)

    def create(self, obj, ns):
        self.writes.append(("create", obj["kind"], obj["metadata"]["name"]))
        return None if (obj["kind"], obj["metadata"]["name"]) in self.exists else stored(obj)

    def apply(self, obj, ns):
        self.writes.append(("apply", obj["kind"], obj["metadata"]["name"]))
        return stored(obj, rv="2")


def child(kind, name):
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "labels": b.labels("j")},
    }


@pytest.mark.asyncio
async def test_a_child_the_cache_lacks_is_posted_one_it_has_is_applied_a_409_applies():
    kube = RecordingKube(exists={("Service", "j")})
    ctl = Controller(kube, ["ns"])
    key = ("ns", "j")
    ctl.cache.put_job(job())
    ctl.cache.put("ConfigMap", stored(child("ConfigMap", "j-config")))
    for kind, name in (("Pod", "j-router"), ("ConfigMap", "j-config"), ("Service", "j")):
        await ctl.execute_action(key, p.Action("apply", kind, name, child(kind, name), "test"))
    assert kube.writes == [
        ("create", "Pod", "j-router"),  # not cached: a POST, no server-side apply
        ("apply", "ConfigMap", "j-config"),  # cached: applied
        ("create", "Service", "j"),  # not cached, but there (409): applied
        ("apply", "Service", "j"),
    ]
    assert ctl.cache.objs[key][("Service", "j")]["metadata"]["resourceVersion"] == "2"


@pytest.mark.asyncio
async def test_the_pass_that_makes_the_gang_leaves_label_events_and_status_to_the_next():
    """A START pass writes what the pods reference, then the pods, and nothing else; the
    next pass (the job has pods now) writes the queue label, the Event and the status."""
    kube = RecordingKube()
    now = p.ts(p.datetime.now(p.UTC))

    def create(obj, ns):  # made now (not at the helpers' fixed time: no pods-ready timeout)
        out = RecordingKube.create(kube, obj, ns)
        out["metadata"]["creationTimestamp"] = now
        return out

    kube.create = create
    ctl = Controller(kube, ["ns"])
    j = job(status={"phase": "Queued"})
    del j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    admitted(ctl, j)
    key = ("ns", "j")
    assert ctl.priority(key) == ctl.START

    assert await ctl.reconcile(key) == GANG_FOLLOW_UP_S
    pods = [i for i, w in enumerate(kube.writes) if w[1] == "Pod"]
    assert len(pods) == 7  # 2 trainers, 3 engines, router, buffer
    before = {w[1] for w in kube.writes[: pods[0]]}
    assert {"ServiceAccount", "ConfigMap", "Secret", "NetworkPolicy", "Role"} <= before
    assert not [w for w in kube.writes if w[0] in ("event", "patch_status") or w[1] == api.KIND]
    assert kube.status is None
    assert ctl.priority(key) == ctl.NORMAL  # the follow-up waits behind other gangs

    kube.writes.clear()
    await ctl.reconcile(key)  # (requeued for the pods-ready timeout)
    assert ("patch", api.KIND, "j") in kube.writes  # the queue label
    assert ("event", "Admitted", "") in kube.writes
    assert kube.writes[-1] == ("patch_status", api.KIND, "j")  # after its Event
    assert kube.status["phase"] == "Admitted"
    assert not [w for w in kube.writes if w[1] == "Pod"]
