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
