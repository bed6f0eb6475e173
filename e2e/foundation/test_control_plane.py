"""The local control plane is real: Kueue admits by quota, its webhooks answer, the
scheduler places GPU pods on kwok nodes, the controller-manager runs StatefulSets."""

from __future__ import annotations

import subprocess
import uuid

import pytest
import yaml

from e2e.cluster.paths import bin_dir

pytestmark = pytest.mark.cluster

GPU = "nvidia.com/gpu"


def _uid() -> str:
    return uuid.uuid4().hex[:6]


def queue_with_gpu_quota(cluster, namespace: str, gpus: int) -> str:
    """A ResourceFlavor + ClusterQueue (`gpus` GPUs) + LocalQueue; returns the LocalQueue."""
    name = f"cq-{_uid()}"
    cluster.apply(
        [
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "ResourceFlavor",
                "metadata": {"name": f"{name}-gpu-a"},
                "spec": {"nodeLabels": {"rlpost.dev/gpu-kind": "a"}},
            },
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "ClusterQueue",
                "metadata": {"name": name},
                "spec": {
                    "namespaceSelector": {},
                    "resourceGroups": [
                        {
                            "coveredResources": ["cpu", "memory", GPU],
                            "flavors": [
                                {
                                    "name": f"{name}-gpu-a",
                                    "resources": [
                                        {"name": "cpu", "nominalQuota": "100"},
                                        {"name": "memory", "nominalQuota": "1000Gi"},
                                        {"name": GPU, "nominalQuota": str(gpus)},
                                    ],
                                }
                            ],
                        }
                    ],
                },
            },
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "LocalQueue",
                "metadata": {"name": "lq", "namespace": namespace},
                "spec": {"clusterQueue": name},
            },
        ]
    )
    return "lq"


def workload(name: str, namespace: str, queue: str, gpus: int, pod_sets=None) -> dict:
    container = {
        "name": "c",
        "image": "busybox",
        "resources": {"requests": {"cpu": "1", GPU: str(gpus)}, "limits": {GPU: str(gpus)}},
    }
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "queueName": queue,
            "podSets": pod_sets
            or [
                {
                    "name": "main",
                    "count": 1,
                    "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
                }
            ],
        },
    }


def condition(obj: dict, ctype: str) -> dict | None:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == ctype:
            return c
    return None


def test_workload_admitted_within_quota_second_waits_then_admitted(cluster, namespace):
    lq = queue_with_gpu_quota(cluster, namespace, gpus=8)
    cluster.apply(workload("first", namespace, lq, gpus=8))

    def admitted(name):
        wl = cluster.get_json("workload", name, "-n", namespace)
        qr, ad = condition(wl, "QuotaReserved"), condition(wl, "Admitted")
        return qr and ad and qr["status"] == "True" and ad["status"] == "True" and wl

    wl = cluster.wait_for("first workload admitted", lambda: admitted("first"), timeout=60)
    assert wl["status"]["admission"]["podSetAssignments"][0]["flavors"][GPU].endswith("-gpu-a")

    cluster.apply(workload("second", namespace, lq, gpus=8))

    def pending_reason():
        wl = cluster.get_json("workload", "second", "-n", namespace)
        qr = condition(wl, "QuotaReserved")
        return qr if qr and qr["status"] == "False" and qr["message"] else None

    qr = cluster.wait_for("second workload pending with a reason", pending_reason, timeout=30)
    assert qr["reason"] == "Pending"
    assert "insufficient unused quota for nvidia.com/gpu" in qr["message"], qr["message"]
    assert not admitted("second")

    cluster.kubectl("delete", "workload", "first", "-n", namespace)
    cluster.wait_for("second workload admitted", lambda: admitted("second"), timeout=60)


def test_kueue_webhook_rejects_invalid_workload(cluster, namespace):
    lq = queue_with_gpu_quota(cluster, namespace, gpus=8)
    template = {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    bad = workload(
        "bad",
        namespace,
        lq,
        gpus=1,
        pod_sets=[
            {"name": "a", "count": 2, "minCount": 1, "template": template},
            {"name": "b", "count": 2, "minCount": 1, "template": template},
        ],
    )
    with pytest.raises(RuntimeError) as err:
        cluster.apply(bad)
    msg = str(err.value)
    assert "admission webhook" in msg and "vworkload.kb.io" in msg, msg
    assert "at most one podSet can use minCount" in msg, msg
    got = cluster.kubectl("get", "workload", "bad", "-n", namespace, check=False)
    assert got.returncode != 0  # nothing was stored


def gpu_pod(name: str, gpus: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "busybox",
                    "resources": {"requests": {GPU: str(gpus)}, "limits": {GPU: str(gpus)}},
                }
            ],
        },
    }


def test_gpu_pod_runs_on_kwok_node_and_oversized_pod_is_unschedulable(cluster, namespace):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_yaml(gpu_pod("fits", 4)))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_yaml(gpu_pod("too-big", 9)))

    def running():
        pod = cluster.get_json("pod", "fits", "-n", namespace)
        return pod["status"].get("phase") == "Running" and pod

    pod = cluster.wait_for("GPU pod Running", running, timeout=60)
    node = cluster.get_json("node", pod["spec"]["nodeName"])
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert int(node["status"]["allocatable"][GPU]) >= 4

    def unschedulable():
        pod = cluster.get_json("pod", "too-big", "-n", namespace)
        cond = condition(pod, "PodScheduled")
        return cond and cond["status"] == "False" and cond["reason"] == "Unschedulable" and cond

    cond = cluster.wait_for("oversized pod Unschedulable", unschedulable, timeout=60)
    assert "Insufficient nvidia.com/gpu" in cond["message"], cond["message"]
    assert cluster.get_json("pod", "too-big", "-n", namespace)["status"]["phase"] == "Pending"


def test_statefulset_pods_created_by_controller_manager_and_running(cluster, namespace):
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "serviceName": "web",
            "replicas": 3,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        },
    }
    cluster.apply(sts)

    def all_running():
        pods = cluster.get_json("pods", "-n", namespace, "-l", "app=web")["items"]
        names = sorted(p["metadata"]["name"] for p in pods)
        ok = names == ["web-0", "web-1", "web-2"] and all(
            p["status"].get("phase") == "Running" for p in pods
        )
        return ok and pods

    pods = cluster.wait_for("3 StatefulSet pods Running", all_running, timeout=90)
    assert all(p["metadata"]["ownerReferences"][0]["kind"] == "StatefulSet" for p in pods)
    cluster.wait_for(
        "StatefulSet readyReplicas=3",
        lambda: cluster.get_json("sts", "web", "-n", namespace)["status"].get("readyReplicas") == 3,
        timeout=60,
    )


def test_server_and_tools_report_pinned_versions(cluster):
    import json

    from e2e.cluster.paths import versions

    v = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert v["serverVersion"]["gitVersion"] == versions()["K8S_VERSION"]
    assert v["clientVersion"]["gitVersion"] == versions()["K8S_VERSION"]
    helm = subprocess.run(
        [str(bin_dir() / "helm"), "version", "--short"], capture_output=True, text=True
    )
    assert helm.stdout.startswith(versions()["HELM_VERSION"]), helm.stdout


def _yaml(doc: dict) -> str:
    return yaml.safe_dump(doc)


def test_second_cluster_side_by_side_and_down_ends_exactly_its_processes(cluster, tmp_path):
    from e2e.cluster import LocalCluster
    from e2e.cluster.localcluster import _alive

    other = LocalCluster(state=tmp_path / "other").up()
    try:
        assert set(other.ports.values()).isdisjoint(cluster.ports.values())
        nodes = other.get_json("nodes")["items"]
        assert len(nodes) == 4
        pids = dict(other.pids)
        assert all(_alive(p) for p in pids.values())
    finally:
        other.down()
    assert not any(_alive(p) for p in pids.values())
    assert not (tmp_path / "other").exists()
    # the session's cluster is untouched
    assert all(_alive(p) for p in cluster.pids.values())
    assert cluster.kubectl("get", "nodes").returncode == 0


def test_kwok_renews_node_leases_so_nodes_stay_ready(cluster):
    """Without renewed Leases the node lifecycle controller marks nodes (and every pod on
    them) NotReady about 40 s in; kwok stands in for the kubelet's heartbeat."""
    import time

    def renew_times():
        leases = cluster.get_json("leases", "-n", "kube-node-lease")["items"]
        # only kwok's nodes: a real node's kubelet (e2e/cluster/node.py) renews its own
        return {
            x["metadata"]["name"]: x["spec"].get("renewTime")
            for x in leases
            if x["metadata"]["name"].startswith("gpu-")
        }

    first = cluster.wait_for("4 node leases", lambda: len(renew_times()) == 4 and renew_times())
    assert set(first) == {"gpu-a-0", "gpu-a-1", "gpu-b-0", "gpu-b-1"}
    time.sleep(12)  # kwok renews every leaseDuration/4 = 10 s
    later = renew_times()
    assert all(later[n] != first[n] for n in first), (first, later)
