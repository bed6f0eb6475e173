"""Pure builders: the Workload's podSets and the children's pod specs."""

from __future__ import annotations

from operator_helpers import FLAVORS, GPU, admit, job
from rlpost_operator import builders as b

from rlpost import api

REF = b.JobRef("j", "ns", "uid-1")


def spec(**kw) -> api.RLPostTrainJobSpec:
    return api.RLPostTrainJobSpec.model_validate(job(**kw)["spec"])


def gpus(ps):
    return ps["template"]["spec"]["containers"][0]["resources"]["requests"].get(GPU)


def test_disaggregated_workload_podsets_counts_gpus():
    wl = b.build_workload(REF, spec(), "team-a")
    sets = {ps["name"]: ps for ps in wl["spec"]["podSets"]}
    assert list(sets) == ["trainer", "rollout", "router", "buffer"]
    assert (sets["trainer"]["count"], gpus(sets["trainer"])) == (2, "4")
    assert (sets["rollout"]["count"], gpus(sets["rollout"])) == (3, "2")
    assert gpus(sets["router"]) is None and gpus(sets["buffer"]) is None
    assert wl["spec"]["queueName"] == "team-a" and wl["spec"]["active"] is True
    owner = wl["metadata"]["ownerReferences"][0]
    assert owner["controller"] is True and owner["kind"] == "RLPostTrainJob"
    # No finalizer: a namespace being deleted never waits on the operator to write
    assert "finalizers" not in wl["metadata"]
    assert "priorityClassRef" not in wl["spec"]


def test_workload_podsets_carry_what_kueue_reads_and_the_hash_the_whole_template():
    s = spec()
    wl = b.build_workload(REF, s, "team-a")
    for ps in wl["spec"]["podSets"]:
        full = b.pod_template(REF, s, ps["name"])
        pod = ps["template"]["spec"]
        assert set(pod) <= set(b.KUEUE_POD_FIELDS) | {"containers", "initContainers"}
        assert [set(c) for c in pod["containers"]] == [{"name", "resources"}] * len(
            pod["containers"]
        )
        assert [c["resources"] for c in pod["containers"]] == [
            c["resources"] for c in full["spec"]["containers"]
        ]
        for key in ("nodeSelector", "tolerations", "affinity"):
            assert pod.get(key) == full["spec"].get(key)
        assert ps["template"]["metadata"]["labels"] == full["metadata"]["labels"]
    # what Kueue does not read is not sent, but a change to it still replaces the Workload
    changed = spec(trainer={"replicas": 2, "gpusPerPod": 4, "image": "example/trainer:2"})
    other = b.build_workload(REF, changed, "team-a")
    assert other["spec"]["podSets"] == wl["spec"]["podSets"]
    assert other["metadata"]["annotations"] != wl["metadata"]["annotations"]


def test_colocated_requests_gpus_once():
    s = spec(mode="colocated", trainer={"replicas": 2, "gpusPerPod": 8})
    wl = b.build_workload(REF, s, "q")
    sets = {ps["name"]: ps for ps in wl["spec"]["podSets"]}
    assert list(sets) == ["worker", "router", "buffer"]
    assert gpus(sets["worker"]) == "8" and sets["worker"]["count"] == 2
    total = sum(int(gpus(ps) or 0) * ps["count"] for ps in sets.values())
    assert total == 16
    gang = b.build_compute_children(REF, s, b.StartInfo())
    assert {o["kind"] for o in gang} == {"Pod"}
    names = [o["metadata"]["name"] for o in gang]
    assert names == ["j-worker-0", "j-worker-1", "j-router", "j-buffer"]  # no engine pods
    # the pods the gang is made of are the pods Kueue counted, GPUs requested once
    requested = sum(
        int(o["spec"]["containers"][0]["resources"]["requests"].get(GPU, 0)) for o in gang
    )
    assert requested == total


def test_priority_class_ref():
    wl = b.build_workload(REF, spec(priorityClassName="rlpost-production"), "q", 1000)
    assert wl["spec"]["priority"] == 1000
    assert wl["spec"]["priorityClassRef"] == {
        "group": "kueue.x-k8s.io",
        "kind": "WorkloadPriorityClass",
        "name": "rlpost-production",
    }


def test_podset_updates_merge_flavors_and_admission_checks():
    wl = admit(b.build_workload(REF, spec(), "q"), gpu_flavor="gpu-b")
    wl["status"]["admissionChecks"] = [
        {
            "name": "prov",
            "podSetUpdates": [
                {"name": "trainer", "labels": {"x": "y"}, "nodeSelector": {"zone": "z1"}}
            ],
        }
    ]
    upd = b.podset_updates(wl, FLAVORS)
    assert upd["trainer"].node_selector == {"rlpost.dev/gpu-kind": "b", "zone": "z1"}
    assert upd["trainer"].tolerations[0]["value"] == "b"
    assert upd["trainer"].labels == {"x": "y"}
    assert upd["router"].node_selector == {}  # cpu flavor: no node labels
    assert b.missing_flavors(wl, {"cpu": FLAVORS["cpu"]}) == ["gpu-b"]


def test_children_carry_flavor_podset_label_security_and_wiring():
    s = spec(
        model={"path": "m", "pvc": "models"},
        data={"prompts": "p.jsonl", "pvc": "datasets"},
        checkpoint={"pvc": "ckpt", "path": "runs"},
    )
    wl = admit(b.build_workload(REF, s, "q"))
    start = b.StartInfo(updates=b.podset_updates(wl, FLAVORS), resume_step=40, attempt=2)
    gang = b.build_compute_children(REF, s, start)
    objs = {o["metadata"]["name"]: o for o in gang}
    # one pod per trainer replica, made by the operator: each is its own stable identity
    # (a StatefulSet pod's): hostname = name, subdomain = the job's headless Service, so
    # j-trainer-0.j (MASTER_ADDR) resolves; its ordinal is the pod-index label
    trainers = [o for o in gang if o["metadata"]["labels"]["rlpost.dev/role"] == "trainer"]
    assert [o["metadata"]["name"] for o in trainers] == ["j-trainer-0", "j-trainer-1"]
    svc = b.build_service(REF)
    assert svc["metadata"]["name"] == "j"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    for i, t in enumerate(trainers):
        assert t["kind"] == "Pod" and t["spec"]["restartPolicy"] == "Always"
        assert (t["spec"]["hostname"], t["spec"]["subdomain"]) == (f"j-trainer-{i}", "j")
        assert t["metadata"]["labels"]["rlpost.dev/pod-index"] == str(i)
        assert svc["spec"]["selector"].items() <= t["metadata"]["labels"].items()
        assert t["metadata"]["ownerReferences"][0]["kind"] == "RLPostTrainJob"
    t0 = objs["j-trainer-0"]
    assert t0["metadata"]["labels"]["kueue.x-k8s.io/podset"] == "trainer"
    assert t0["metadata"]["labels"]["rlpost.dev/attempt"] == "2"
    assert t0["spec"]["nodeSelector"] == {"rlpost.dev/gpu-kind": "a"}
    c = t0["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["MASTER_ADDR"]["value"] == "j-trainer-0.j"
    index_ref = env["RLPOST_POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index_ref == "metadata.labels['rlpost.dev/pod-index']"
    # The gang (rlpost_trainer.ranks): pods x ranks per pod; the trainer's launcher gives each
    # rank its RANK/WORLD_SIZE/LOCAL_RANK, the pod sets none of them.
    assert (env["NNODES"]["value"], env["NPROC_PER_NODE"]["value"]) == ("2", "4")
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK"} & set(env)
    assert env["RLPOST_RESUME_STEP"]["value"] == "40"
    assert env["RLPOST_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "j-token", "key": "token"}
    assert "value" not in env["RLPOST_TOKEN"]
    assert c["resources"]["limits"][GPU] == "4"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault" and sc["runAsNonRoot"] is True
    # The uid the images create and own /var/lib/rlpost with (USER 10001 in each Dockerfile).
    psc = t0["spec"]["securityContext"]
    assert (psc["runAsUser"], psc["runAsGroup"], psc["fsGroup"]) == (10001, 10001, 10001)
    vols = {v["name"]: v for v in t0["spec"]["volumes"]}
    assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    assert vols["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert vols["data"]["persistentVolumeClaim"]["claimName"] == "datasets"
    assert vols["state"]["persistentVolumeClaim"]["claimName"] == "ckpt"
    assert vols["config"]["configMap"]["name"] == "j-config"
    assert env["RLPOST_STATE_DIR"]["value"] == "/checkpoints/runs/j/trainer"
    assert env["RLPOST_CHECKPOINT_DIR"]["value"] == "/checkpoints/runs/j/trainer/checkpoints"
    assert b.build_state_pvc(REF, s) is None  # the user's own PVC: none is created
    engines = [objs[f"j-rollout-{i}"] for i in range(3)]
    assert "j-rollout-3" not in objs  # spec.rollout.engines pods
    for rollout in engines:
        assert rollout["spec"]["containers"][0]["resources"]["requests"][GPU] == "2"
    buf = objs["j-buffer"]
    assert buf["kind"] == "Pod" and buf["metadata"]["labels"]["kueue.x-k8s.io/podset"] == "buffer"
    assert "nodeSelector" not in buf["spec"]
    # the resume step is part of the content hash: a new checkpoint means a new start
    other = b.build_compute_children(
        REF, s, b.StartInfo(updates=start.updates, resume_step=50, attempt=2)
    )
    assert other[0]["metadata"]["name"] == "j-trainer-0"
    assert other[0]["metadata"]["annotations"] != t0["metadata"]["annotations"]
    assert other[0]["metadata"]["annotations"]["rlpost.dev/resume-step"] == "50"
    assert b.resume_step_of(other[0]) == 50 and b.resume_step_of(t0) == 40


def test_role_is_least_privilege_and_config_renders_job():
    role = b.build_role(REF)
    cm_rule = next(r for r in role["rules"] if r["resources"] == ["configmaps"])
    assert cm_rule["resourceNames"] == ["j-progress"] and set(cm_rule["verbs"]) == {"get", "patch"}
    pods_rule = next(r for r in role["rules"] if r["resources"] == ["pods"])
    assert set(pods_rule["verbs"]) == {"get", "list", "watch"}
    wire = spec().wire()
    cm = b.build_config_map(REF, wire, 7)
    assert cm["data"]["resume-step"] == "7"
    assert (
        api.RLPostTrainJob.model_validate(
            __import__("yaml").safe_load(cm["data"]["job.yaml"])
        ).spec.trainer.replicas
        == 2
    )
    # one Service per job: headless, every pod of the job (each pod's DNS name is under it)
    (svc,) = [o for o in b.build_static_children(REF, spec(), wire) if o["kind"] == "Service"]
    assert svc["spec"] == {
        "clusterIP": "None",
        "selector": {"app.kubernetes.io/name": "rlpost", "app.kubernetes.io/instance": "j"},
        "publishNotReadyAddresses": True,
    }


def test_default_state_is_a_pvc_owned_by_the_job_mounted_where_state_is_kept():
    s = spec()
    pvc = b.build_state_pvc(REF, s)
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] == "j-state"
    assert pvc["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert "storageClassName" not in pvc["spec"]  # the cluster's default class
    s2 = spec(checkpoint={"storageClassName": "local-path", "size": "2Gi", "path": "/runs"})
    pvc2 = b.build_state_pvc(REF, s2)
    assert pvc2["spec"]["storageClassName"] == "local-path"
    assert pvc2["spec"]["resources"]["requests"]["storage"] == "2Gi"
    objs = {o["metadata"]["name"]: o for o in b.build_compute_children(REF, s2, b.StartInfo())}

    def pod(name):
        return objs[name]["spec"]

    def env(name):
        return {e["name"]: e.get("value") for e in pod(name)["containers"][0]["env"]}

    def claims(name):
        return {
            v["persistentVolumeClaim"]["claimName"]
            for v in pod(name)["volumes"]
            if "persistentVolumeClaim" in v
        }

    # trainer and buffer keep state in the PVC (checkpoint.path is inside it, '/' ignored)
    for t in ("j-trainer-0", "j-trainer-1"):
        assert claims(t) == claims("j-buffer") == {"j-state"}
        assert env(t)["RLPOST_STATE_DIR"] == "/state/runs/trainer"
        assert env(t)["RLPOST_CHECKPOINT_DIR"] == "/state/runs/trainer/checkpoints"
    assert env("j-buffer")["RLPOST_STATE_DIR"] == "/state/runs/buffer"
    # engines and router keep none (a ReadWriteOnce volume binds its users to one node)
    for e in ("j-rollout-0", "j-rollout-1", "j-rollout-2"):
        assert claims(e) == claims("j-router") == set()


def test_engines_wait_for_weights_behind_a_service_that_publishes_not_ready_pods():
    s = spec(rollout={"engines": 3, "gpusPerEngine": 2, "engine": "reference"})
    svc = b.build_service(REF)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    objs = {o["metadata"]["name"]: o for o in b.build_compute_children(REF, s, b.StartInfo())}
    for i in range(3):
        # each engine pod is reachable as j-rollout-<i>.j (the job's headless Service)
        pod_spec = objs[f"j-rollout-{i}"]["spec"]
        assert (pod_spec["hostname"], pod_spec["subdomain"]) == (f"j-rollout-{i}", "j")
        assert (
            svc["spec"]["selector"].items() <= objs[f"j-rollout-{i}"]["metadata"]["labels"].items()
        )
        eng = pod_spec["containers"][0]
        env = {e["name"]: e.get("value") for e in eng["env"]}
        assert env["RLPOST_WAIT_FOR_WEIGHTS"] == "1"
        assert eng["readinessProbe"]["httpGet"]["path"] == "/health"
    trainer = objs["j-trainer-0"]["spec"]["containers"][0]
    tenv = {e["name"]: e.get("value") for e in trainer["env"]}
    assert tenv["RLPOST_ENGINE_SERVICE"] == (
        "j-rollout-0.j:30000,j-rollout-1.j:30000,j-rollout-2.j:30000"
    )
    assert tenv["RLPOST_BUFFER_URL"] == "http://j-buffer.j:8000"
    assert tenv["RLPOST_ROUTER_URL"] == "http://j-router.j:30000"
    assert tenv["MASTER_ADDR"] == "j-trainer-0.j"
    assert "RLPOST_ENGINE_URLS" not in tenv
    # SGLang's /health cannot wait: an exec probe reads the pushed weight version
    s2 = spec(model={"path": "m", "pvc": "models"}, rollout={"engines": 3, "gpusPerEngine": 2,
              "engine": "sglang"})  # fmt: skip
    objs2 = {o["metadata"]["name"]: o for o in b.build_compute_children(REF, s2, b.StartInfo())}
    probe = objs2["j-rollout-0"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["exec"]["command"][:3] == ["python", "-m", "rlpost_rollout.ready"]


def test_router_exposes_prometheus_metrics():
    objs = {o["metadata"]["name"]: o for o in b.build_compute_children(REF, spec(), b.StartInfo())}
    tmpl = objs["j-router"]  # one router pod, the operator's own
    assert tmpl["kind"] == "Pod" and tmpl["spec"]["restartPolicy"] == "Always"
    c = tmpl["spec"]["containers"][0]
    assert c["command"][-2:] == ["--prometheus-port", "29000"]
    assert {"name": "metrics", "containerPort": 29000} in c["ports"]
    ann = tmpl["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "29000"
