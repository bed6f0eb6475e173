"""One run of benchmarks/peer_kuberay.py: a fresh local control plane (Kueue's ray.io/rayjob
integration on, KubeRay's CRDs served), one operator, N jobs created at once, then the
idle minute and, optionally, the namespace's deletion. Nothing is left running."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes
from scale_common import (
    REPO,
    ApiserverMetrics,
    api_client,
    cpu_seconds,
    delta,
    flavor_doc,
    kcm_writes,
    loadavg,
    pct,
    queue_docs,
    r1,
    vm_hwm_mib,
)

from e2e.cluster import LocalCluster
from e2e.cluster.addons import established
from peer.recorder import Recorder
from peer.sides import Side, kuberay_crds

NS = "bench"
RAISED = ("--kube-api-qps=200", "--kube-api-burst=400")
# Fake nodes for the jobs' pods besides LocalCluster's 4 GPU nodes: room for 1000 jobs x 4
# pods (a GPU node takes 110) and KubeRay's 500m submitter sidecar per head pod.
BENCH_NODES = 4
BENCH_NODE_CAPACITY = {"cpu": "1000", "memory": "4Ti", "pods": "1100"}


def bench_node(i: int) -> dict:
    name = f"bench-{i}"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {},
        "status": {
            "allocatable": BENCH_NODE_CAPACITY,
            "capacity": BENCH_NODE_CAPACITY,
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"},
        },
    }


def new_cluster(limits: str) -> LocalCluster:
    return LocalCluster(
        state=Path(tempfile.mkdtemp(prefix="rlpost-peer-")),
        kueue_frameworks=("ray.io/rayjob",),
        extra_crds=(kuberay_crds(),),
        kcm_args=RAISED if limits == "raised" else (),
    )


def prepare_cluster(cluster: LocalCluster) -> None:
    crd = REPO / "crds" / "rlposttrainjobs.rlpost.dev.yaml"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    cluster.wait_for(
        "our CRD Established", lambda: established(cluster, "rlposttrainjobs.rlpost.dev"), 60
    )
    cluster.apply([flavor_doc(), *(bench_node(i) for i in range(BENCH_NODES))])

    def ready_nodes() -> bool:
        nodes = cluster.get_json("nodes")["items"]
        ready = [
            n
            for n in nodes
            for c in n["status"].get("conditions", [])
            if c["type"] == "Ready" and c["status"] == "True"
        ]
        return len(ready) == len(nodes)

    cluster.wait_for("the bench nodes Ready", ready_nodes, 60)
    cluster.kubectl("create", "namespace", NS)
    cluster.apply(queue_docs(NS))


def create_jobs(api, side: Side, names: list[str]) -> None:
    """Concurrently, straight to the API (16 client threads), as many users would."""
    custom = kubernetes.client.CustomObjectsApi(api)
    group, version, plural = side.job_api

    core = kubernetes.client.CoreV1Api(api)

    def create(name: str) -> None:
        for obj in side.user_objects(name, NS):  # only PVCs so far
            core.create_namespaced_persistent_volume_claim(NS, obj)
        custom.create_namespaced_custom_object(group, version, NS, plural, side.doc(name, NS))

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(create, names))


def component_cpu(cluster: LocalCluster) -> dict[str, float]:
    """CPU seconds of each control-plane process (etcd, kube-apiserver, the controller-manager,
    the scheduler, Kueue, kwok): where the machine's cores go during a run."""
    out = {}
    for name, pid in cluster.pids.items():
        with contextlib.suppress(OSError):  # exited
            out[name] = cpu_seconds(pid)
    return out


def job_states(api, side: Side) -> dict[str, int]:
    """The jobs counted by what their status says (ours: phase; KubeRay:
    jobDeploymentStatus), read once the run settled: the status caught up with the pods."""
    group, version, plural = side.job_api
    items = kubernetes.client.CustomObjectsApi(api).list_namespaced_custom_object(
        group, version, NS, plural
    )["items"]
    return dict(sorted(Counter(side.job_state(j) for j in items).items()))


def settle(side: Side, quiet_s: float, cap_s: float) -> float:
    """Wait until the operator has written nothing for `quiet_s` (the status writes and
    readiness that follow the last pods: every job settled), at most `cap_s`: the seconds
    waited. Writes per job are counted from here, and the idle minute starts here."""
    t0 = time.monotonic()
    last, changed = side.writes(), time.monotonic()
    while time.monotonic() - changed < quiet_s and time.monotonic() - t0 < cap_s:
        time.sleep(1)
        now = side.writes()
        if now != last:
            last, changed = now, time.monotonic()
    return time.monotonic() - t0


def run_one(side: Side, n: int, limits: str, opts, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = new_cluster(limits)
    rec = None
    try:
        cluster.up()
        prepare_cluster(cluster)
        api = api_client(cluster.kubeconfig)
        side.prepare(cluster, api, NS, n, workdir)
        side.start(cluster, NS, workdir)
        cluster.wait_for(f"the {side.name} operator's metrics", side.ready, 60)
        rec = Recorder(api, NS, side).start()
        time.sleep(3)  # the watches' initial lists
        apim = ApiserverMetrics(cluster)
        base_api, base_kcm, base_op = apim.writes(), kcm_writes(cluster), side.writes()
        base_passes = side.passes()
        cpu_start = cpu_seconds(side.pid)  # its start-up (imports, informers' lists)
        comp_start = component_cpu(cluster)
        la_start = loadavg()

        t0 = time.monotonic()
        names = [f"j{i:04d}" for i in range(n)]
        create_jobs(api, side, names)
        submit_s = time.monotonic() - t0
        deadline = t0 + opts.timeout
        while time.monotonic() < deadline:
            side.alive()
            now = rec.timings(names)
            if now["complete"] == n and now["running"] == n:
                break
            time.sleep(1)
        tm = rec.timings(names)
        settle_s = settle(side, opts.settle, max(deadline - time.monotonic(), 60.0))
        op_w, api_w, kcm_w = side.writes(), apim.writes(), kcm_writes(cluster)
        passes = side.passes() - base_passes
        cpu_settled = cpu_seconds(side.pid)
        states = job_states(api, side)
        comp = delta(component_cpu(cluster), comp_start)
        comp["operator"] = cpu_settled - cpu_start

        time.sleep(opts.idle)  # the idle minute: every job present, nothing changing
        idle_op, idle_api = side.writes() - op_w, apim.writes()["total"] - api_w["total"]
        cpu_end, rss = cpu_seconds(side.pid), vm_hwm_mib(side.pid)
        la_end = loadavg()
        api_d = delta(api_w, base_api)
        top = sorted(((k, v) for k, v in api_d.items() if k != "total"), key=lambda kv: -kv[1])
        out = {
            "side": side.name,
            "label": side.label(),
            "settings": side.settings(),
            "jobs": n,
            "kcm_limits": limits,
            "kcm_args": list(RAISED if limits == "raised" else ()),
            "pods_per_job": side.expected_pods,
            "jobs_admitted": tm["admitted"],
            "jobs_with_all_pods": tm["complete"],
            "job_status_at_settle": states,
            "submit_seconds": r1(submit_s),
            "settle_seconds": r1(settle_s),
            "wall_seconds_to_last_jobs_pods": (
                r1(tm["last"] - t0) if tm["complete"] == n else None
            ),
            "create_to_workload_s": {"p50": r1(pct(tm["c2w"], 50)), "p99": r1(pct(tm["c2w"], 99))},
            "admission_to_all_pods_s": {
                "p50": r1(pct(tm["a2p"], 50)),
                "p99": r1(pct(tm["a2p"], 99)),
            },
            # ... Running: a pod made before it can be scheduled (its claim not bound) is
            # "made" early; this is when the gang can work
            "jobs_with_all_pods_running": tm["running"],
            "wall_seconds_to_last_jobs_pods_running": (
                r1(tm["last_running"] - t0) if tm["running"] == n else None
            ),
            "admission_to_all_pods_running_s": {
                "p50": r1(pct(tm["a2r"], 50)),
                "p99": r1(pct(tm["a2r"], 99)),
            },
            "operator_writes_per_job": round((op_w - base_op) / n, 2),
            "operator_passes_per_job": round(passes / n, 2),
            "api_writes_per_job": round(api_d.get("total", 0.0) / n, 2),
            "kcm_writes_per_job": (
                round((kcm_w - base_kcm) / n, 2) if None not in (kcm_w, base_kcm) else None
            ),
            "api_writes_by_resource": {k: int(v) for k, v in top[:20]},
            "operator_cpu_seconds": round(cpu_end, 1),
            "operator_cpu_seconds_at_start": round(cpu_start, 1),
            "operator_cpu_seconds_to_settle": round(cpu_settled, 1),
            "operator_peak_rss_mib": round(rss, 1),
            "cpu_seconds_by_component": {k: round(v, 1) for k, v in sorted(comp.items())},
            "idle": {
                "seconds": opts.idle,
                "operator_writes": idle_op,
                "api_writes": idle_api,
                "operator_cpu_seconds": round(cpu_end - cpu_settled, 2),
            },
            "load_average_start": la_start,
            "load_average_end": la_end,
            "logs": str(workdir),
        }
        if opts.teardown:
            out["teardown"] = teardown(api, side, n)
        return out
    finally:
        if rec is not None:
            rec.stop.set()
        side.stop()
        cluster.down()


def teardown(api, side: Side, n: int, cap: float = 120) -> dict:
    """Delete the namespace with all n jobs in it: the operator's CPU until it is gone,
    the writes it attempts once the deletionTimestamp is set (counted from just before the
    DELETE, every response code: a 403 is an attempt too), the time until it is gone."""
    core = kubernetes.client.CoreV1Api(api)
    w0, c0 = side.writes(), cpu_seconds(side.pid)
    t0 = time.monotonic()
    core.delete_namespace(NS)  # sets the deletionTimestamp before it answers
    gone, peak, last_c, last_t = None, 0.0, c0, t0
    while time.monotonic() - t0 < cap:
        time.sleep(1)
        c, t = cpu_seconds(side.pid), time.monotonic()
        peak, last_c, last_t = max(peak, (c - last_c) / (t - last_t)), c, t
        try:
            core.read_namespace(NS)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                gone = t - t0
                break
    cpu = cpu_seconds(side.pid) - c0
    elapsed = time.monotonic() - t0
    left = []
    if gone is None:  # what holds it (the namespace controller says)
        conds = core.read_namespace(NS).status.conditions or []
        left = [f"{c.type}: {c.message}" for c in conds if c.status == "True"]
    time.sleep(5)  # a late attempt still counts
    writes = side.writes() - w0
    return {
        "jobs": n,
        "namespace_gone_s": r1(gone),
        "namespace_left_because": left,
        "operator_writes_after_deletion": writes,
        "operator_cpu_seconds": round(cpu, 2),
        "operator_cpu_cores_mean": round(cpu / elapsed, 3),
        "operator_cpu_cores_peak_1s": round(peak, 3),
        "ok": {
            "cpu_below_0.1_core": cpu / elapsed < 0.1,
            "zero_writes": writes == 0,
            "gone_below_60s": gone is not None and gone < 60,
        },
    }
