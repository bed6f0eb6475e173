"""The reward pool in the cluster (spec.reward.pool.workers > 0): one more podSet of the job's
Workload, a Ray head pod and worker pods (the operator's own), the head's Service, the
buffer's address, and the protocol: admitted with the gang, stopped with it, its pod
failures counted, not fatal (an ended pool pod is deleted and created again)."""

from __future__ import annotations

import copy

from operator_helpers import admit, job, pod
from rlpost_operator import builders as b
from rlpost_operator.builders import raypool
from test_op_protocol import settle, wl_for

from rlpost import api

REF = b.JobRef("j", "ns", "uid-1")
POOL = {"workers": 2, "cpusPerWorker": 1.5, "memory": "3Gi"}
REWARD = {"type": "custom", "function": "mypkg.rewards:score", "pool": POOL}


def spec(**kw) -> api.RLPostTrainJobSpec:
    return api.RLPostTrainJobSpec.model_validate(job(**kw)["spec"])


def container(obj) -> dict:
    tmpl = obj["spec"].get("template", obj)
    return tmpl["spec"]["containers"][0]


def env(c) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_pool_is_one_podset_of_head_plus_workers_charged_to_cpu():
    wl = b.build_workload(REF, spec(reward=REWARD), "q")
    sets = {ps["name"]: ps for ps in wl["spec"]["podSets"]}
    assert list(sets) == ["trainer", "rollout", "router", "buffer", "reward-pool"]
    pool = sets["reward-pool"]
    assert pool["count"] == 3  # the head and 2 workers
    res = container(pool["template"])["resources"]
    assert res == {"requests": {"cpu": "1500m", "memory": "3Gi"}, "limits": {"memory": "3Gi"}}
    assert "nvidia.com/gpu" not in res["requests"]
    assert pool["template"]["metadata"]["labels"]["kueue.x-k8s.io/podset"] == "reward-pool"
    assert b.expected_pods(spec(reward=REWARD)) == b.expected_pods(spec()) + 3
    # workers 0 (the default): no pool, no podSet, rewards in the buffer as before
    plain = b.build_workload(REF, spec(), "q")
    assert "reward-pool" not in [ps["name"] for ps in plain["spec"]["podSets"]]
    assert b.build_pool_pods(REF, spec(), b.StartInfo()) == []
    gang = b.build_compute_children(REF, spec(), b.StartInfo())
    assert not [o for o in gang if o["metadata"]["labels"]["rlpost.dev/role"] == "reward-pool"]
    buffer = container(b.build_buffer_pod(REF, spec(), b.StartInfo()))
    assert "RLPOST_RAY_ADDRESS" not in env(buffer)


def test_head_and_worker_pods_request_what_the_podset_counted():
    s = spec(reward=REWARD)
    start = b.StartInfo(attempt=2)
    deps = {d["metadata"]["name"]: d for d in b.build_pool_pods(REF, s, start)}
    # one head pod and pool.workers worker pods: the podSet's count
    assert list(deps) == ["j-ray-head", "j-ray-worker-0", "j-ray-worker-1"]
    head, worker = deps["j-ray-head"], deps["j-ray-worker-0"]
    podset = next(
        ps for ps in b.build_workload(REF, s, "q")["spec"]["podSets"] if ps["name"] == "reward-pool"
    )
    assert len(deps) == podset["count"]
    gang = {o["metadata"]["name"] for o in b.build_compute_children(REF, s, start)}
    assert set(deps) <= gang  # made with the gang
    svc = b.build_service(REF)["spec"]["selector"]
    nodes = [(head, "head"), *((deps[f"j-ray-worker-{i}"], "worker") for i in range(2))]
    for d, node in nodes:
        assert d["kind"] == "Pod" and d["spec"]["restartPolicy"] == "Always"
        # reachable as <pod>.j: the job's headless Service selects every pool pod
        assert (d["spec"]["hostname"], d["spec"]["subdomain"]) == (d["metadata"]["name"], "j")
        assert svc.items() <= d["metadata"]["labels"].items()
        assert container(d)["resources"] == container(podset["template"])["resources"]
        labels = d["metadata"]["labels"]
        assert labels["rlpost.dev/role"] == "reward-pool"
        assert labels["rlpost.dev/ray-node"] == node and labels["rlpost.dev/attempt"] == "2"
        assert labels["kueue.x-k8s.io/podset"] == "reward-pool"
        owner = d["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "RLPostTrainJob" and owner["controller"] is True
        pod_spec = d["spec"]
        assert pod_spec["securityContext"]["runAsUser"] == 10001
        assert pod_spec["securityContext"]["runAsNonRoot"] is True
        assert pod_spec["automountServiceAccountToken"] is False
        c = container(d)
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["image"] == "ghcr.io/rlpost/rollout:0.1.0"  # rollout.image unless pool.image
        assert env(c)["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert {"name": "metrics", "containerPort": 8080} in c["ports"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    hc, wc = container(head), container(worker)
    assert hc["command"][:3] == ["ray", "start", "--head"]
    assert "--num-cpus=0" in hc["command"]  # tasks run on the workers only
    assert "--ray-client-server-port=10001" in hc["command"]
    assert "--dashboard-host=0.0.0.0" in hc["command"]
    assert "--node-ip-address=$(POD_IP)" in hc["command"]
    assert hc["readinessProbe"]["httpGet"] == {"path": "/api/gcs_healthz", "port": 8265}
    script = wc["command"][2]
    assert wc["command"][:2] == ["sh", "-c"]
    # waits for the head's GCS, then joins it with ceil(1.5) = 2 task CPUs
    assert script.index("j-ray-head.j 6379") < script.index("exec ray start")
    assert "--address=j-ray-head.j:6379 --num-cpus=2" in script
    assert wc["readinessProbe"]["httpGet"] == {"path": "/api/local_raylet_healthz", "port": 52365}


def test_pool_image_and_cpu_quantities():
    s = spec(reward={**REWARD, "pool": {**POOL, "image": "registry.local/rewards:7"}})
    deps = b.build_pool_pods(REF, s, b.StartInfo())
    assert len(deps) == 3 and {container(d)["image"] for d in deps} == {"registry.local/rewards:7"}
    assert raypool.cpu_quantity(1.0) == "1" and raypool.cpu_quantity(0.25) == "250m"
    s.reward.pool.cpus_per_worker = 0.5
    assert raypool.ray_cpus(s) == 1  # a fraction of a CPU still runs one task


def test_buffer_finds_the_pool_through_the_head_pods_name():
    s = spec(reward=REWARD)
    buf = container(b.build_buffer_pod(REF, s, b.StartInfo()))
    # the head pod's name under the job's headless Service (no Service of its own)
    assert env(buf)["RLPOST_RAY_ADDRESS"] == "ray://j-ray-head.j:10001"
    head = b.build_pool_pods(REF, s, b.StartInfo())[0]
    assert (head["spec"]["hostname"], head["spec"]["subdomain"]) == ("j-ray-head", "j")
    assert {(o["kind"], o["metadata"]["name"]) for o in b.build_static_children(REF, s, {})} >= {
        ("Service", "j")
    }
    assert not [
        o for o in b.build_static_children(REF, s, {}) if o["metadata"]["name"] == "j-ray-head"
    ]


def test_intra_job_policy_admits_buffer_to_head_and_head_to_workers():
    """The per-job policy selects every pod of the job (the pool's too) and takes traffic
    from every pod of the job: buffer -> head, head <-> workers, on any of Ray's ports."""
    pol = b.build_network_policy(REF)
    sel = pol["spec"]["podSelector"]["matchLabels"]
    (rule,) = pol["spec"]["ingress"]
    peer = rule["from"][0]["podSelector"]["matchLabels"]
    assert "ports" not in rule  # Ray's raylets and workers use ports it picks itself
    deps = b.build_pool_pods(REF, spec(reward=REWARD), b.StartInfo())
    assert len(deps) == 3
    for d in deps:
        labels = d["metadata"]["labels"]
        assert sel.items() <= labels.items() and peer.items() <= labels.items()


# ---------------------------------------------------------------------------- protocol


def pool_world():
    """Admitted and running with a pool: every pod Ready."""
    j = job(status={"phase": "Queued"}, reward=REWARD)
    wl = admit(wl_for(j))
    plan, j, children = settle(j, wl)
    created = {(a.kind, a.name) for a in plan.actions if a.verb in ("apply", "create")}
    assert {("Pod", "j-ray-head"), ("Pod", "j-ray-worker-0"), ("Pod", "j-ray-worker-1")} <= created
    assert ("Service", "j") in created
    pods = [pod(f"j-trainer-{i}", "trainer") for i in range(2)]
    pods += [pod(f"j-rollout-{i}", "rollout") for i in range(3)]
    pods += [pod("j-router", "router"), pod("j-buffer", "buffer")]
    pods += [pod("j-ray-head", "reward-pool"), pod("j-ray-worker-0", "reward-pool")]
    plan, j, children = settle(j, wl, children, pods)
    assert plan.status["readyPods"] == "9/10"  # the pool's pods count in the gang
    assert plan.status["phase"] == "Admitted"
    pods.append(pod("j-ray-worker-1", "reward-pool"))
    plan, j, children = settle(j, wl, children, pods)
    assert plan.status["phase"] == "Running" and plan.status["readyPods"] == "10/10"
    return j, wl, children, pods


def test_pool_pods_are_admitted_with_the_gang_and_their_loss_does_not_stop_it():
    j, wl, children, pods = pool_world()
    # a worker pod fails: the operator deletes it (no controller replaces it); counted, the
    # gang goes on
    failed = pod("j-ray-worker-1", "reward-pool", ready=False, failed=True)
    pods[-1] = failed
    plan, j, children = settle(j, wl, children, pods)
    assert [(a.verb, a.name) for a in plan.actions if a.verb in ("delete", "apply")] == [
        ("delete", "j-ray-worker-1")
    ]
    assert plan.status["phase"] == "Admitted" and not plan.status.get("restarts")
    assert not plan.restarted
    assert plan.status["roleRestarts"] == {"reward-pool": 1}
    assert sorted(e[1] for e in plan.events if e[0] == "Warning") == [
        "PodRecreated",
        "RoleRestarted",
    ]
    # gone: the next pass creates it again; counted once
    pods.pop()
    plan, j, children = settle(j, wl, children, pods, failed_pods=[failed])
    assert [(a.verb, a.name) for a in plan.actions if a.verb in ("delete", "apply")] == [
        ("apply", "j-ray-worker-1")
    ]
    assert plan.status["roleRestarts"] == {"reward-pool": 1}
    assert "RoleRestarted" not in [e[1] for e in plan.events]
    pods.append(pod("j-ray-worker-1", "reward-pool"))
    pods[-1]["metadata"]["uid"] = "u-j-ray-worker-1-again"
    plan, j, children = settle(j, wl, children, pods, failed_pods=[failed])
    assert plan.status["phase"] == "Running" and plan.status["readyPods"] == "10/10"
    assert not [a for a in plan.actions if a.verb in ("delete", "apply")]
    assert plan.status["roleRestarts"] == {"reward-pool": 1}


def test_pool_is_stopped_with_the_gang_on_eviction():
    j, wl, children, pods = pool_world()
    wl = copy.deepcopy(wl)
    wl["status"]["conditions"].append(
        {"type": "Evicted", "status": "True", "reason": "Preempted", "message": "preempted"}
    )
    plan, _, _ = settle(j, wl, children, pods)
    deleted = {(a.kind, a.name) for a in plan.actions if a.verb == "delete"}
    pool = {("Pod", "j-ray-head"), ("Pod", "j-ray-worker-0"), ("Pod", "j-ray-worker-1")}
    assert pool <= deleted
    assert {("Pod", "j-trainer-0"), ("Pod", "j-rollout-0"), ("Pod", "j-buffer")} <= deleted
