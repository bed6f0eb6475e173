"""mode colocated in a cluster (builders): one worker pod runs the trainer AND an engine
container, sharing /dev/shm and the torch shared-memory manager's directory; the trainer
syncs its own pod's engine; the router discovers the worker pods; the job's policy lets it
reach them. Pure: no API server."""

from __future__ import annotations

from operator_helpers import job
from rlpost_operator import builders as b
from rlpost_operator import validation as v
from rlpost_operator.constants import ENGINE_PORT

from rlpost import api

REF = b.JobRef("j", "ns", "uid-1")
CPU_COLOCATED = {
    "mode": "colocated",
    "trainer": {"replicas": 1, "gpusPerPod": 0, "resources": {"cpu": "250m", "memory": "2Gi"}},
    "rollout": {
        "engines": 1,
        "gpusPerEngine": 0,
        "engine": "reference",
        "resources": {"cpu": "500m", "memory": "3Gi"},
    },
}


def spec(**kw) -> api.RLPostTrainJobSpec:
    return api.RLPostTrainJobSpec.model_validate(job(**{**CPU_COLOCATED, **kw})["spec"])


def children(s: api.RLPostTrainJobSpec) -> dict:
    return {o["metadata"]["name"]: o for o in b.build_compute_children(REF, s, b.StartInfo())}


def env_of(c: dict) -> dict:
    return {e["name"]: e.get("value") for e in c["env"]}


def mounts_of(c: dict) -> dict:
    return {m["mountPath"]: m["name"] for m in c["volumeMounts"]}


def test_worker_pod_runs_the_trainer_and_the_rollout_engine():
    s = spec()
    objs = children(s)
    # one worker pod (trainer.replicas 1), no engine or trainer pods of their own
    assert sorted(objs) == ["j-buffer", "j-router", "j-worker-0"]
    worker = objs["j-worker-0"]
    assert (worker["spec"]["hostname"], worker["spec"]["subdomain"]) == ("j-worker-0", "j")
    assert worker["metadata"]["labels"]["rlpost.dev/pod-index"] == "0"
    pod = worker["spec"]
    trainer, engine = pod["containers"]
    assert trainer["name"] == "worker" and engine["name"] == "engine"
    assert trainer["command"] == ["python", "-m", "rlpost_trainer"]
    assert trainer["image"] == s.trainer.image and engine["image"] == s.rollout.image
    # The engine is the disaggregated mode's engine pod's: same command, same env.
    disagg = api.RLPostTrainJobSpec.model_validate(
        job(rollout=CPU_COLOCATED["rollout"], trainer=CPU_COLOCATED["trainer"])["spec"]
    )
    rollout = children(disagg)["j-rollout-0"]["spec"]["containers"][0]
    assert engine["command"] == rollout["command"]
    assert engine["readinessProbe"] == rollout["readinessProbe"]
    eenv = env_of(engine)
    assert {k: v for k, v in eenv.items() if k != "TMPDIR"} == env_of(rollout)
    assert eenv["RLPOST_WAIT_FOR_WEIGHTS"] == "1"  # Ready (routed to) only after a push
    assert engine["ports"] == [{"name": "http", "containerPort": ENGINE_PORT}]
    # The trainer talks to its own pod's engine (pause/release/resume, ipc sync) and treats
    # it as a cluster engine (nothing trusted: it pushes weights before the engine is Ready).
    tenv = env_of(trainer)
    assert tenv["RLPOST_ENGINE_SERVICE"] == f"127.0.0.1:{ENGINE_PORT}"
    assert "RLPOST_ENGINE_URLS" not in tenv and tenv["RLPOST_MODE"] == "colocated"
    assert tenv["MASTER_ADDR"] == "j-worker-0.j"


def test_worker_containers_share_shm_and_the_ipc_dir_without_new_privileges():
    pod = children(spec())["j-worker-0"]["spec"]
    trainer, engine = pod["containers"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert len(vols) == len(pod["volumes"])  # no volume twice
    assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    for c in (trainer, engine):
        m = mounts_of(c)
        assert m["/dev/shm"] == "dshm"
        tmp = env_of(c)["TMPDIR"]  # torch's shm manager socket: the same path in both
        assert m[tmp] == "ipc" and "emptyDir" in vols["ipc"]
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True and sc.get("privileged") is False
        assert set(m.values()) <= set(vols)
    assert pod["securityContext"]["runAsUser"] == 10001
    assert "shareProcessNamespace" not in pod and "hostIPC" not in pod
    # Only the trainer keeps state and uses the API (the progress ConfigMap).
    assert "state" in mounts_of(trainer).values() and "state" not in mounts_of(engine).values()
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert mounts_of(engine)[sa] == "no-sa-token" and vols["no-sa-token"] == {
        "name": "no-sa-token",
        "emptyDir": {},
    }
    assert sa not in mounts_of(trainer)


def test_worker_podset_counts_what_runs_and_gpus_once():
    s = spec()
    sets = {ps["name"]: ps for ps in b.build_workload(REF, s, "q")["spec"]["podSets"]}
    assert list(sets) == ["worker", "router", "buffer"] and sets["worker"]["count"] == 1
    trainer, engine = sets["worker"]["template"]["spec"]["containers"]
    assert trainer["resources"]["requests"] == {"cpu": "250m", "memory": "2Gi"}
    assert engine["resources"]["requests"] == {"cpu": "500m", "memory": "3Gi"}
    assert engine["resources"]["limits"] == {"memory": "3Gi"}
    # On GPUs the trainer container requests the pod's GPUs; the engine never does.
    g = api.RLPostTrainJobSpec.model_validate(
        job(mode="colocated", trainer={"replicas": 1, "gpusPerPod": 8})["spec"]
    )
    trainer, engine = b.build_workload(REF, g, "q")["spec"]["podSets"][0]["template"]["spec"][
        "containers"
    ]
    assert trainer["resources"]["requests"]["nvidia.com/gpu"] == "8"
    assert "nvidia.com/gpu" not in engine["resources"]["requests"]


def test_router_finds_the_worker_pods_and_the_policy_lets_it_reach_them():
    from rlpost_rollout.router import engine_role, router_argv

    s = spec()
    full = api.RLPostTrainJob.model_validate(
        {"metadata": {"name": "j", "namespace": "ns"}, "spec": s.wire()}
    )
    assert engine_role(full) == "worker"
    argv = router_argv(full, 30000, in_cluster=True, engine_urls=[], namespace="ns")
    i = argv.index("--selector")
    wanted = dict(kv.split("=", 1) for kv in argv[i + 1 : i + 3])
    assert argv[argv.index("--service-discovery-port") + 1] == str(ENGINE_PORT)
    objs = children(s)
    worker_labels = objs["j-worker-0"]["metadata"]["labels"]
    assert wanted.items() <= worker_labels.items()
    router_labels = objs["j-router"]["metadata"]["labels"]
    buffer_labels = objs["j-buffer"]["metadata"]["labels"]
    assert not wanted.items() <= router_labels.items()
    assert not wanted.items() <= buffer_labels.items()
    # The job's NetworkPolicy: the worker pods take traffic from the router (any port of
    # the job's own pods, nothing from outside the job).
    pol = b.build_network_policy(REF)["spec"]
    assert pol["podSelector"]["matchLabels"].items() <= worker_labels.items()
    (rule,) = pol["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= router_labels.items()
    assert "namespaceSelector" not in peer and "ipBlock" not in peer
    # The job's one headless Service names the worker pod (rendezvous: MASTER_ADDR).
    assert b.build_service(REF)["spec"]["selector"].items() <= worker_labels.items()
    wenv = {e["name"]: e.get("value") for e in objs["j-worker-0"]["spec"]["containers"][0]["env"]}
    assert wenv["MASTER_ADDR"] == "j-worker-0.j"


def test_colocated_is_accepted_in_a_cluster_as_one_cpu_worker_pod():
    s = spec()
    assert v.cluster_support_errors(s) == []
    assert v.pre_admission_errors(REF, s, job(**CPU_COLOCATED)["spec"], None) == []


def test_colocated_refuses_what_one_cpu_worker_pod_cannot_run():
    s = spec(
        trainer={"replicas": 2, "gpusPerPod": 4},
        rollout={"engines": 3, "gpusPerEngine": 0, "engine": "reference"},
    )
    replicas, engines, gpus = v.cluster_support_errors(s)
    assert "set trainer.replicas to 1 (it is 2)" in replicas
    assert "set rollout.engines to 1 (it is 3" in engines
    assert "runs on the CPU only for now" in gpus and "trainer.gpusPerPod" in gpus
    for msg in (replicas, engines, gpus):
        assert msg.startswith("mode: colocated in a cluster")
        assert msg in v.pre_admission_errors(REF, s, job()["spec"], None)
    # disaggregated: nothing of this applies
    assert v.cluster_support_errors(spec(mode="disaggregated")) == []
