"""Issue 16, must show 4: the reward pool is one more podSet of the job's single Workload,
admitted with the rest of the gang or not at all, inside the tenant's CPU quota. Against the
real control plane (Kueue with its webhooks, kwok nodes), the operator run as a process.
"""

from __future__ import annotations

import pytest

from e2e.operator.conftest import job_doc, wait
from e2e.operator.test_operator import cond, get, items, pods_of, submit, wait_phase, workloads

pytestmark = pytest.mark.cluster

# trainer 2 x 1 CPU, engines 2 x 1, router and buffer 250m each: 4.5 CPUs, which fit in 8;
# the pool (a head and 2 workers of 2 CPUs each) adds 6: 10.5 do not.
POOL = {"workers": 2, "cpusPerWorker": 2, "memory": "1Gi"}
REWARD = {"type": "custom", "function": "rlpost_rollout.rewards.builtin:exact_match", "pool": POOL}


@pytest.mark.cpus(8)
def test_pool_without_cpu_quota_keeps_the_whole_job_queued_then_all_is_admitted(
    cluster, op, namespace
):
    ns = namespace
    submit(cluster, job_doc("pool", ns, reward=REWARD))

    def queued_with_message():
        j = get(cluster, "rljob", "pool", ns)
        c = cond(j, "Queued")
        st = j.get("status") or {}
        return st.get("phase") == "Queued" and c and "insufficient" in c["message"] and c

    c = wait(cluster, "Queued with Kueue's reason", queued_with_message, 60)
    assert c["status"] == "True" and "cpu" in c["message"], c["message"]
    assert "reward-pool" in c["message"]  # Kueue names the podSet that does not fit
    print(f"Queued: {c['message']}")
    (wl,) = workloads(cluster, ns)
    sets = {ps["name"]: ps["count"] for ps in wl["spec"]["podSets"]}
    assert sets == {"trainer": 2, "rollout": 2, "router": 1, "buffer": 1, "reward-pool": 3}
    assert "admission" not in (wl.get("status") or {})
    # No partial start: not a pod of any podSet, the pool's included (the gang is pods the
    # operator creates itself, nothing else).
    assert pods_of(cluster, "pool", ns) == []
    assert items(cluster, "statefulsets,deployments", ns, "app.kubernetes.io/instance=pool") == []

    # The tenant's quota grows: the same Workload is admitted, every podSet at once.
    cluster.kubectl(
        "patch", "clusterqueue", ns, "--type=json", "-p",
        '[{"op": "replace", "path": "/spec/resourceGroups/0/flavors/0/resources/0/'
        'nominalQuota", "value": 16}]',
    )  # fmt: skip
    job = wait_phase(cluster, "pool", ns, "Running", timeout=120)
    assert cond(job, "Queued")["status"] == "False"
    (wl,) = workloads(cluster, ns)
    assigned = {psa["name"] for psa in wl["status"]["admission"]["podSetAssignments"]}
    assert assigned == {"trainer", "rollout", "router", "buffer", "reward-pool"}
    assert job["status"]["readyPods"] == "9/9"
    pool = [
        p
        for p in pods_of(cluster, "pool", ns)
        if p["metadata"]["labels"]["rlpost.dev/role"] == "reward-pool"
    ]
    nodes = sorted(p["metadata"]["labels"]["rlpost.dev/ray-node"] for p in pool)
    assert nodes == ["head", "worker", "worker"]
    names = sorted(p["metadata"]["name"] for p in pool)
    assert names == ["pool-ray-head", "pool-ray-worker-0", "pool-ray-worker-1"]
    for p in pool:
        assert p["status"]["phase"] == "Running"
        assert p["metadata"]["labels"]["kueue.x-k8s.io/podset"] == "reward-pool"
        assert p["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2"
        assert p["spec"]["securityContext"]["runAsUser"] == 10001
    # the head is reached by its pod's name under the job's one headless Service
    head = get(cluster, "pod", "pool-ray-head", ns)["spec"]
    assert (head["hostname"], head["subdomain"]) == ("pool-ray-head", "pool")
    assert get(cluster, "service", "pool", ns)["spec"]["clusterIP"] == "None"
    buffer = get(cluster, "pod", "pool-buffer", ns)
    env = {e["name"]: e.get("value") for e in buffer["spec"]["containers"][0]["env"]}
    assert env["RLPOST_RAY_ADDRESS"] == "ray://pool-ray-head.pool:10001"
    # The pool goes with the job.
    cluster.kubectl("delete", "rljob", "pool", "-n", ns, "--wait=true", timeout=60)
    wait(cluster, "the pool's pods gone", lambda: not pods_of(cluster, "pool", ns), 60)
