"""The real node runs containers: volumes, cluster DNS, Services, `kubectl logs`; its
guard rules never see a packet; `down` leaves nothing of it behind (run last)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from e2e.cluster import hostnet
from e2e.cluster import node as real_node
from e2e.cluster.procs import _alive

pytestmark = pytest.mark.cluster

NODE = real_node.NODE_NAME
PLACEMENT = {
    "nodeSelector": {"rlpost.dev/node": "real"},
    "tolerations": [{"key": "rlpost.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}],
}


def _pod(name: str, image: str, script: str, **extra) -> dict:
    container = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", textwrap.dedent(script)],
        **extra.pop("container", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            **PLACEMENT,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            **extra,
        },
    }


def test_node_registered_with_labels_taint_and_gpus(node_cluster):
    n = node_cluster.get_json("node", NODE)
    labels = n["metadata"]["labels"]
    assert labels["rlpost.dev/node"] == "real"
    assert labels["rlpost.dev/gpu-kind"] == "real"
    assert labels["kubernetes.io/hostname"] == NODE
    assert real_node.TAINT in n["spec"]["taints"]
    assert n["status"]["capacity"]["nvidia.com/gpu"] == "4"
    assert n["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert n["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_pod_with_gpu_volumes_dns_and_service(node_cluster, namespace, busybox):
    c, ns = node_cluster, namespace
    c.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "cfg", "namespace": ns},
                "data": {"greeting": "hello-from-configmap"},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "sec", "namespace": ns},
                "stringData": {"token": "secret-value-42"},
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "namespace": ns},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
            },
        ]
    )
    web = _pod(
        "web",
        busybox,
        """
        mkdir -p /tmp/www && echo served-by-web > /tmp/www/index.html
        exec httpd -f -p 8080 -h /tmp/www
        """,
        container={"readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}},
    )
    web["metadata"]["namespace"] = ns
    c.apply(web)
    c.wait_for(
        "web pod Ready",
        lambda: any(
            x["type"] == "Ready" and x["status"] == "True"
            for x in c.get_json("pod", "web", "-n", ns)["status"].get("conditions", [])
        ),
        timeout=90,
    )
    fqdn = f"web.{ns}.svc.cluster.local"
    client = _pod(
        "client",
        busybox,
        f"""
        set -e
        echo scratch-data > /scratch/file && echo "emptydir: $(cat /scratch/file)"
        echo "configmap: $(cat /cfg/greeting)"
        echo "secret: $(cat /sec/token)"
        nslookup {fqdn}
        echo "http: $(timeout 10 wget -q -O- http://{fqdn}/)"  # (wget -T crashes busybox 1.35)
        # the API server through the `kubernetes` Service (busybox's TLS cannot talk to it: a
        # plain HTTP request gets Go's TLS server's plain-text 400 answer)
        printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 10 kubernetes.default.svc 443
        test -s /var/run/secrets/kubernetes.io/serviceaccount/token
        echo client-done
        """,
        container={
            "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}},
            "volumeMounts": [
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "cfg", "mountPath": "/cfg"},
                {"name": "sec", "mountPath": "/sec"},
            ],
        },
        restartPolicy="Never",
        volumes=[
            {"name": "scratch", "emptyDir": {}},
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "sec", "secret": {"secretName": "sec"}},
        ],
    )
    client["metadata"]["namespace"] = ns
    c.apply(client)

    def finished():
        pod = c.get_json("pod", "client", "-n", ns)
        return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None

    pod = c.wait_for("client pod finished", finished, timeout=120)
    logs = c.kubectl("logs", "client", "-n", ns).stdout
    assert pod["status"]["phase"] == "Succeeded", logs
    assert pod["spec"]["nodeName"] == NODE
    assert pod["status"]["podIP"].startswith("10.89.0.")
    for line in (
        "emptydir: scratch-data",
        "configmap: hello-from-configmap",
        "secret: secret-value-42",
        "http: served-by-web",
        "Client sent an HTTP request to an HTTPS server",
        "client-done",
    ):
        assert line in logs, logs
    svc_ip = c.get_json("svc", "web", "-n", ns)["spec"]["clusterIP"]
    assert svc_ip in logs  # nslookup answered with the Service's ClusterIP


def test_pod_asking_for_more_gpus_than_the_node_has_stays_pending(node_cluster, namespace, busybox):
    pod = _pod(
        "greedy",
        busybox,
        "true",
        container={"resources": {"limits": {"nvidia.com/gpu": "5"}}},
        restartPolicy="Never",
    )
    pod["metadata"]["namespace"] = namespace
    node_cluster.apply(pod)

    def unschedulable():
        conds = node_cluster.get_json("pod", "greedy", "-n", namespace)["status"].get("conditions")
        return any(
            x["type"] == "PodScheduled" and "nvidia.com/gpu" in x.get("message", "")
            for x in conds or []
        )

    node_cluster.wait_for("greedy pod unschedulable for GPUs", unschedulable, timeout=30)


def test_second_real_node_is_refused(node_cluster, tmp_path):
    from e2e.cluster import LocalCluster

    with pytest.raises(RuntimeError, match="a real node already runs on this machine"):
        LocalCluster(state=tmp_path / "second", real_node=True).up()
    assert not (tmp_path / "second").exists()
    assert json.loads(hostnet.LOCK.read_text())["state"] == str(node_cluster.state)


def test_guard_in_place_and_never_hit(node_cluster):
    """After the pods ran: blackhole routes, the egress guard first in FORWARD/OUTPUT, and
    not one packet dropped by it (nothing of ours tried to leave the machine)."""
    routes = subprocess.run(
        ["ip", "-j", "route", "show", "type", "blackhole"], capture_output=True, text=True
    ).stdout
    assert {r["dst"] for r in json.loads(routes)} >= set(hostnet.GUARDED)
    assert hostnet.guard_is_first()
    counters = hostnet.egress_counters()
    assert counters and all(k.split()[1] == "DROP" for k in counters), counters
    assert all(v == 0 for v in counters.values()), counters
    # no masquerade rule of ours; kube-proxy's masquerades only marked service traffic
    nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    assert not [r for r in nat.splitlines() if "MASQUERADE" in r and "KUBE-" not in r], nat


def _leftovers(state: Path, pids: dict[str, int]) -> dict[str, list]:
    node_pids = [p for n, p in pids.items() if n in real_node.NODE_BINARIES and _alive(p)]
    links = json.loads(
        subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout
    )
    routes = json.loads(
        subprocess.run(
            ["ip", "-j", "route", "show", "type", "blackhole"], capture_output=True, text=True
        ).stdout
    )
    return {
        "processes": node_pids + real_node._our_shims(state),
        "mounts": real_node.mounts_under(state),
        "links": [
            x["ifname"]
            for x in links
            if x["ifname"] == hostnet.BRIDGE or x.get("master") == hostnet.BRIDGE
        ],
        "chains": hostnet.our_chains() + hostnet.kube_chains(),
        "routes": [r["dst"] for r in routes if r["dst"] in hostnet.GUARDED],
        "cgroups": [d for d in Path("/sys/fs/cgroup").glob("*" + real_node.CGROUP_ROOT)],
        "lock": [hostnet.LOCK] if hostnet.LOCK.exists() else [],
    }


@pytest.mark.cluster_down
def test_down_leaves_nothing_behind(node_cluster, namespace, busybox):
    """`python -m e2e.cluster down` (another process) on the session's cluster, with a pod
    still running: no process, mount, veth, bridge, chain, route or cgroup of ours stays."""
    if os.environ.get("RLPOST_CLUSTER_STATE"):
        pytest.skip("the session reuses a cluster (RLPOST_CLUSTER_STATE): not taking it down")
    c = node_cluster
    pod = _pod("sleeper", busybox, "exec sleep 3600", restartPolicy="Never")
    pod["metadata"]["namespace"] = namespace
    c.apply(pod)
    c.wait_for(
        "sleeper Running",
        lambda: c.get_json("pod", "sleeper", "-n", namespace)["status"].get("phase") == "Running",
        timeout=60,
    )
    sysctls = dict(c.node["sysctls"])
    pids = dict(c.pids)
    before = _leftovers(c.state, pids)
    for key in ("processes", "mounts", "links", "chains", "routes", "cgroups", "lock"):
        assert before[key], (key, before)
    assert any(name.startswith("veth") for name in before["links"]), before["links"]

    proc = subprocess.run(
        [sys.executable, "-m", "e2e.cluster", "down", "--state", str(c.state)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    after = _leftovers(c.state, pids)
    assert all(not v for v in after.values()), after
    assert not any(_alive(p) for p in pids.values())
    assert not c.state.exists()
    # fixed host paths the kubelet / libcni / shims created for us are gone again
    assert not [d for d in c.node.get("host_dirs", []) if Path(d).exists()]
    assert not Path("/var/lib/kubelet/device-plugins/kubelet.sock").exists()
    for name, value in sysctls.items():
        assert Path("/proc/sys", name).read_text().strip() == value, name
