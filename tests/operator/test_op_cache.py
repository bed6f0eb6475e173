"""The operator's cache after a restart: no resurrection, no stale startup entries."""

from __future__ import annotations

from rlpost_operator.cache import Cache


def obj(kind, name, uid, rv, job="j"):
    return {
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": uid,
            "resourceVersion": str(rv),
            "labels": {"app.kubernetes.io/name": "rlpost", "app.kubernetes.io/instance": job},
        },
        "data": {"token": "c2VjcmV0"},
    }


def test_deleted_object_is_not_resurrected_by_a_late_list():
    c = Cache()
    c.put("Pod", obj("Pod", "p", "u1", 5))
    c.drop("Pod", obj("Pod", "p", "u1", 6))
    c.put("Pod", obj("Pod", "p", "u1", 5), listed=True)  # the startup LIST, answered late
    assert ("Pod", "p") not in c.objs[("ns", "j")]
    c.put("Pod", obj("Pod", "p", "u2", 9))  # same name, new object: welcome
    assert c.objs[("ns", "j")][("Pod", "p")]["metadata"]["uid"] == "u2"


def test_startup_entries_not_confirmed_by_a_watch_expire():
    c = Cache()
    c.put("Pod", obj("Pod", "a", "ua", 1), listed=True)
    c.put("Pod", obj("Pod", "b", "ub", 1), listed=True)
    c.put("Pod", obj("Pod", "a", "ua", 1))  # the watch's own listing confirms a
    assert c.expire_unconfirmed() == {("ns", "j")}
    assert set(c.objs[("ns", "j")]) == {("Pod", "a")}


def test_older_versions_do_not_overwrite_and_secret_data_is_dropped():
    c = Cache()
    c.put("ConfigMap", obj("ConfigMap", "cm", "u", 10))
    c.put("ConfigMap", obj("ConfigMap", "cm", "u", 9))
    assert c.objs[("ns", "j")][("ConfigMap", "cm")]["metadata"]["resourceVersion"] == "10"
    c.put("Secret", obj("Secret", "t", "us", 3))
    assert "data" not in c.objs[("ns", "j")][("Secret", "t")]


def test_failed_pods_of_every_gang_role_are_remembered_after_deletion():
    c = Cache()
    c.put_job(
        {
            "kind": "RLPostTrainJob",
            "metadata": {"name": "j", "namespace": "ns", "uid": "j1", "resourceVersion": "1"},
            "spec": {},
        }  # fmt: skip
    )
    for name, role in (("r0", "rollout"), ("b", "buffer"), ("t0", "trainer"), ("ok", "router")):
        o = obj("Pod", name, f"u-{name}", 2)
        o["metadata"]["labels"].update({"rlpost.dev/role": role, "rlpost.dev/attempt": "0"})
        o["status"] = {"phase": "Running" if name == "ok" else "Failed"}
        c.put("Pod", o)
        c.drop("Pod", o)  # replaced by its owner (or deleted by the operator)
    failed = {p["metadata"]["name"] for p in c.observed(("ns", "j")).failed_pods}
    assert failed == {"r0", "b", "t0"}  # the healthy router pod is no tombstone


def test_resync_of_unwatched_children_adds_drops_and_keeps_what_came_after_the_list():
    """Services, Secrets, RBAC, ...: only the operator writes them, so they are listed (at
    start and every few minutes), not watched."""
    c = Cache()
    c.put("Service", obj("Service", "j", "us", 10))  # the operator's own write
    c.put("Secret", obj("Secret", "j-token", "ut", 11))
    c.put("Secret", obj("Secret", "k-token", "uk", 30, job="k"))  # written after the LIST
    # the LIST (at resourceVersion 20) no longer has the Secret j-token: deleted by hand
    assert c.resync("Secret", "ns", [], 20) == {("ns", "j")}
    assert ("Secret", "j-token") not in c.objs[("ns", "j")]  # the next pass creates it again
    assert ("Secret", "k-token") in c.objs[("ns", "k")]  # newer than the LIST: kept
    assert ("Service", "j") in c.objs[("ns", "j")]  # another kind: untouched
    # one the cache lacks is added (its job is told); the same again changes nothing
    assert c.resync(
        "Service", "ns", [obj("Service", "j", "us", 10), obj("Service", "m", "um", 12, job="m")], 20
    ) == {("ns", "m")}  # noqa: E501
    assert (
        c.resync(
            "Service",
            "ns",
            [obj("Service", "j", "us", 10), obj("Service", "m", "um", 12, job="m")],
            20,
        )
        == set()
    )  # noqa: E501
    # another namespace's LIST does not touch this one
    assert c.resync("Service", "other", [], 20) == set() and ("Service", "m") in c.objs[("ns", "m")]


def test_a_deleted_job_takes_its_unwatched_children_out_of_the_cache():
    c = Cache()
    job = obj("RLPostTrainJob", "j", "uj", 1)
    c.put_job(job)
    c.put("Service", obj("Service", "j", "us", 2))
    c.put("Pod", obj("Pod", "j-buffer", "up", 3))
    c.drop_job(job, ("Service",))
    assert ("Service", "j") not in c.objs[("ns", "j")]  # a new job of that name makes its own
    assert ("Pod", "j-buffer") in c.objs[("ns", "j")]  # watched: its own DELETED event says


def test_a_claim_keeps_its_class_and_phase_and_the_pass_sees_them():
    # the PV controller binds `<job>-state` (a watched kind): the pass reads its phase and
    # class, and the binding modes the controller listed
    c = Cache()
    c.put_job(obj("RLPostTrainJob", "j", "uj", 1))
    pvc = obj("PersistentVolumeClaim", "j-state", "uc", 2)
    pvc["spec"] = {"storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}}
    pvc["status"] = {"phase": "Pending", "capacity": {}}
    assert c.put("PersistentVolumeClaim", pvc) == ("ns", "j")
    pvc = {**pvc, "status": {"phase": "Bound"}}
    pvc["metadata"] = {**pvc["metadata"], "resourceVersion": "3"}
    assert c.put("PersistentVolumeClaim", pvc) == ("ns", "j")  # the binding: a new pass
    c.binding_modes = {"fast": "Immediate"}
    obs = c.observed(("ns", "j"))
    (kept,) = [o for o in obs.children if o["kind"] == "PersistentVolumeClaim"]
    assert kept["spec"] == {"storageClassName": "fast"} and kept["status"] == {"phase": "Bound"}
    assert "data" not in kept and obs.binding_modes == {"fast": "Immediate"}


def test_a_gang_is_to_make_until_its_pods_are_out_or_held_for_a_pending_claim():
    # what puts a job's pass at the queue's START level (and defers its status write)
    c = Cache()
    key = ("ns", "j")
    assert c.gang_to_make(key)  # no pod yet
    router = obj("Pod", "j-router", "ur", 2)
    router["metadata"]["labels"]["rlpost.dev/role"] = "router"
    c.put("Pod", router)
    assert c.gang_to_make(key) is False  # made, except what mounts the state claim
    pvc = obj("PersistentVolumeClaim", "j-state", "uc", 3)
    pvc["status"] = {"phase": "Pending"}
    c.put("PersistentVolumeClaim", pvc)
    assert c.gang_to_make(key) is False  # held: the claim is not bound yet
    pvc["status"] = {"phase": "Bound"}
    pvc["metadata"]["resourceVersion"] = "4"
    c.put("PersistentVolumeClaim", pvc)
    assert c.gang_to_make(key)  # bound: the held pods can be made now
    buffer = obj("Pod", "j-buffer", "ub", 5)
    buffer["metadata"]["labels"]["rlpost.dev/role"] = "buffer"
    c.put("Pod", buffer)
    assert c.gang_to_make(key) is False
