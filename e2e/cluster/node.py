"""A real node for the local cluster: containerd v2 + runc, kubelet, kube-proxy, CoreDNS.

`LocalCluster(state, real_node=True)` calls, in order:
- `prepare()` before etcd: takes the one-per-machine lock, sets up host networking
  (hostnet.py: bridge rlpost0 10.89.0.1/24, blackhole routes, guard chains, sysctls),
  cgroup roots, kubeconfigs and tokens for the node's components;
- `apiserver_args()`: the API server binds 0.0.0.0 (eth0 is dropped by the ingress guard)
  and advertises 10.89.0.1 so pods reach it through the `kubernetes` Service;
- `start()` after the control plane: containerd (pause image imported, never pulled),
  kubelet (registers `rlpost-node-0`, tainted, 4 fake `nvidia.com/gpu` patched into its
  status), kube-proxy (iptables mode) and CoreDNS (cluster names only, no `forward`).
`teardown(cluster, rec)` undoes all of it from the record in cluster.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from rlpost.ports import free_port

from . import hostnet
from .certs import client_cert
from .oci import PAUSE_IMAGE, pause_archive
from .paths import bin_dir
from .procs import _alive, _stop_pid, log

if TYPE_CHECKING:
    from .localcluster import LocalCluster

NODE_NAME = "rlpost-node-0"
GPUS = 4
TAINT = {"key": "rlpost.dev/real-node", "value": "true", "effect": "NoSchedule"}
LABELS = {
    "kubernetes.io/hostname": NODE_NAME,
    "rlpost.dev/node": "real",
    "rlpost.dev/gpu-kind": "real",
}
DNS_IP = "10.96.0.10"
CGROUP_ROOT = "/" + NODE_NAME
CGROUPFS = Path("/sys/fs/cgroup")
NODE_BINARIES = ("kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "coredns")
RUNC = "/usr/sbin/runc"
CNI_BIN = "/usr/lib/cni"
APISERVER_KUBELET_USER = "rlpost:apiserver-kubelet-client"
COREDNS_USER = "rlpost:coredns"
# Fixed paths the kubelet, libcni and the shims use whatever we configure; those we create
# are removed again at teardown (only when empty: others may use them meanwhile).
HOST_DIRS = ("/var/lib/kubelet", "/var/lib/cni", "/var/log/containers", "/run/containerd")


def node_dir(state: Path) -> Path:
    return state / "node"


def containerd_socket(state: Path) -> Path:
    return node_dir(state) / "containerd.sock"


def missing_node_binaries() -> list[str]:
    missing = [b for b in NODE_BINARIES if not (bin_dir() / b).is_file()]
    missing += [
        p for p in (RUNC, f"{CNI_BIN}/bridge", f"{CNI_BIN}/host-local") if not Path(p).exists()
    ]
    return missing


def _env() -> dict[str, str]:
    path = f"{bin_dir()}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return {**os.environ, "PATH": path}


def ctr(state: Path, *args: str, check: bool = True, timeout: float = 120):
    proc = subprocess.run(
        [str(bin_dir() / "ctr"), "--address", str(containerd_socket(state)), "-n", "k8s.io", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def running_node_state() -> Path:
    """State directory of the real node running on this machine (from the lock file)."""
    try:
        return Path(json.loads(hostnet.LOCK.read_text())["state"])
    except (OSError, ValueError, KeyError):
        raise RuntimeError("no real node runs on this machine") from None


def other_real_node() -> Path | None:
    """State directory of a real node already running on this machine, if any."""
    try:
        state = running_node_state()
    except RuntimeError:
        return None
    return state if (state / "cluster.json").exists() else None


def import_image(archive_path: str | Path, state: Path | None = None) -> str:
    """Import an OCI/Docker image archive into the real node's containerd (namespace k8s.io,
    where the kubelet's CRI looks). Returns ctr's output (the imported names).

    Only the unpacked snapshots are kept: the compressed layers are dropped from the content
    store once unpacked (containerd's discard_unpacked_layers; the archive in the image
    cache is the copy). For our three images that is 6.7 GiB less disk on the node: with
    them, containerd holds 17 GiB of snapshots."""
    state = state or running_node_state()
    out = ctr(
        state,
        "images",
        "import",
        "--local",
        "--discard-unpacked-layers",
        str(archive_path),
        timeout=600,
    ).stdout
    # the discarded layers go at containerd's next garbage collection; now, not later
    ctr(state, "content", "prune", "references", timeout=300)
    return out


def free_bytes(state: Path) -> int:
    """Free space on the filesystem that holds the node's containerd (and the kubelet)."""
    st = os.statvfs(node_dir(state))
    return st.f_bavail * st.f_frsize


def pressure(cluster: LocalCluster) -> list[str]:
    """The node's pressure conditions that are True (DiskPressure: the kubelet admits no new
    pod and evicts), with the kubelet's message."""
    node = cluster.get_json("node", NODE_NAME)
    return [
        f"{c['type']}: {c.get('message', '')}"
        for c in node["status"].get("conditions", [])
        if c["type"].endswith("Pressure") and c.get("status") == "True"
    ]


class RealNode:
    def __init__(self, cluster: LocalCluster):
        self.c = cluster
        self.dir = node_dir(cluster.state)
        self.rec = cluster.node

    # ------------------------------------------------------------------ before etcd
    def prepare(self, certs: dict[str, Path]) -> list[str]:
        """Host networking, cgroups, credentials. Returns token lines for tokens.csv."""
        missing = missing_node_binaries()
        if missing:
            raise RuntimeError(
                f"real node needs {missing}: run `bash e2e/cluster/build.sh` and "
                "`bash e2e/system_deps.sh`"
            )
        hostnet.acquire_lock(self.c.state)
        host_dirs = [d for d in HOST_DIRS if not Path(d).exists()]
        self.rec.update(name=NODE_NAME, lock=True, host_dirs=host_dirs)
        self.c._save()
        for p in ("kubelet", "kubelet_healthz", "proxy_healthz", "proxy_metrics"):
            self.c.ports[p] = free_port()
        for p in ("dns", "dns_health", "dns_ready"):
            self.c.ports[p] = free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        api, dns = self.c.ports["apiserver"], self.c.ports["dns"]
        hostnet.setup(self.rec, self.c._save, {"tcp": [api, dns], "udp": [dns]})
        self._make_cgroup_root()
        client_cert(certs["ca"].parent, "apiserver-kubelet-client", APISERVER_KUBELET_USER)
        lines = []
        for comp, user, group in (
            ("kubelet", f"system:node:{NODE_NAME}", "system:nodes"),
            ("kube-proxy", "system:kube-proxy", ""),
            ("coredns", COREDNS_USER, ""),
        ):
            token = os.urandom(16).hex()
            (self.dir / f"{comp}.kubeconfig").write_text(
                yaml.safe_dump(self.c._kubeconfig_doc(token))
            )
            lines.append(f'{token},{user},{user},"{group}"' if group else f"{token},{user},{user}")
        return lines

    def _make_cgroup_root(self) -> None:
        self.rec["cgroups"] = []
        for hier in sorted(p for p in CGROUPFS.iterdir() if (p / "cgroup.procs").exists()):
            d = hier / CGROUP_ROOT.lstrip("/")
            self.rec["cgroups"].append(str(d))
            self.c._save()
            d.mkdir(exist_ok=True)
            for f in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset starts empty
                if (d / f).exists() and not (d / f).read_text().strip():
                    (d / f).write_text((hier / f).read_text())

    def apiserver_args(self, args: list[str], certs: dict[str, Path]) -> list[str]:
        drop = ("--bind-address=", "--advertise-address=", "--endpoint-reconciler-type=")
        pki = certs["ca"].parent
        return [a for a in args if not a.startswith(drop)] + [
            "--bind-address=0.0.0.0",  # eth0 is dropped by RLPOST-INGRESS-GUARD
            f"--advertise-address={hostnet.GATEWAY}",
            "--endpoint-reconciler-type=lease",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            # Never resolve a node's Hostname address through the host's DNS.
            "--kubelet-preferred-address-types=InternalIP",
        ]

    # ------------------------------------------------------------------ after the control plane
    def start(self) -> None:
        t0 = time.monotonic()
        self.c.apply(_rbac())
        self._start_containerd()
        self._start_kubelet()
        self._start_kube_proxy()
        self._start_coredns()
        log(f"real node {NODE_NAME} ready in {time.monotonic() - t0:.1f}s")

    def _spawn(self, binary: str, args: list[str]) -> None:
        self.c._spawn(binary, args, env=_env())

    def _start_containerd(self) -> None:
        d = self.dir
        cni_conf = d / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-rlpost.conflist").write_text(json.dumps(_cni_conflist(d), indent=1))
        # Any pull goes to a closed local port: no registry is reachable, and none is tried.
        hosts = d / "registry" / "_default"
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts.toml").write_text('server = "http://127.0.0.1:1"\n')
        (d / "containerd.toml").write_text(_containerd_config(d))
        log("starting containerd")
        self._spawn("containerd", [f"--config={d / 'containerd.toml'}", "--log-level=warn"])
        self.c.wait_for(
            "containerd",
            lambda: (
                self._alive_or_raise() and ctr(self.c.state, "version", check=False).returncode == 0
            ),
            30,
        )
        archive = pause_archive(d / "pause.oci.tar")
        ctr(self.c.state, "images", "import", str(archive))
        log(f"imported sandbox image {PAUSE_IMAGE}")

    def _start_kubelet(self) -> None:
        d = self.dir
        (d / "kubelet-config.yaml").write_text(yaml.safe_dump(self._kubelet_config()))
        log(f"starting kubelet ({NODE_NAME})")
        self._spawn(
            "kubelet",
            [
                f"--config={d / 'kubelet-config.yaml'}",
                f"--kubeconfig={d / 'kubelet.kubeconfig'}",
                f"--root-dir={d / 'kubelet'}",
                f"--cert-dir={d / 'kubelet' / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                # the node's InternalIP (where the API server reaches the kubelet for logs and
                # exec); a loopback node IP is refused by the kubelet
                f"--node-ip={hostnet.GATEWAY}",
                "--node-labels=" + ",".join(f"{k}={v}" for k, v in LABELS.items()),
                "--v=1",
            ],
        )
        self.c.wait_for("node registered", lambda: self._alive_or_raise() and self._node(), 90)
        patch = [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": str(GPUS)}]
        self.c.kubectl(
            "patch",
            "node",
            NODE_NAME,
            "--subresource=status",
            "--type=json",
            "-p",
            json.dumps(patch),
        )

        def ready_with_gpus() -> bool:
            self._alive_or_raise()
            n = self._node()
            conds = {c["type"]: c["status"] for c in n["status"].get("conditions", [])}
            gpus = n["status"]["allocatable"].get("nvidia.com/gpu")
            return conds.get("Ready") == "True" and gpus == str(GPUS)

        self.c.wait_for(f"{NODE_NAME} Ready with {GPUS} GPUs allocatable", ready_with_gpus, 120)

    def _kubelet_config(self) -> dict:
        d, ca = self.dir, self.c.state / "pki" / "ca.crt"
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # the host has cgroup v1 only (KEP-5573)
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": CGROUP_ROOT,
            "containerRuntimeEndpoint": f"unix://{containerd_socket(self.c.state)}",
            "address": hostnet.GATEWAY,  # eth0 -> 10.89.0.0/16 is dropped by the guard
            "port": self.c.ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.c.ports["kubelet_healthz"],
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(ca)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [DNS_IP],
            "clusterDomain": "cluster.local",
            "resolvConf": "",  # pods never get the host's resolvers
            "podLogsDir": str(d / "pod-logs"),
            "volumePluginDir": str(d / "volume-plugins"),
            "registerNode": True,
            "registerWithTaints": [TAINT],
            "failSwapOn": False,
            "nodeStatusUpdateFrequency": "4s",
            "imageGCHighThresholdPercent": 100,  # local-only images must never be collected
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "serializeImagePulls": False,
        }

    def _start_kube_proxy(self) -> None:
        d, p = self.dir, self.c.ports
        cfg = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(d / "kube-proxy.kubeconfig")},
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": hostnet.POD_CIDR,
            "bindAddress": "127.0.0.1",
            "healthzBindAddress": f"127.0.0.1:{p['proxy_healthz']}",
            "metricsBindAddress": f"127.0.0.1:{p['proxy_metrics']}",
            "nodePortAddresses": [f"{hostnet.GATEWAY}/32"],
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
            # 0 = leave the host's conntrack sysctls alone
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        (d / "kube-proxy-config.yaml").write_text(yaml.safe_dump(cfg))
        log("starting kube-proxy (iptables mode)")
        self._spawn("kube-proxy", [f"--config={d / 'kube-proxy-config.yaml'}", "--v=1"])
        self.c._wait_http(f"http://127.0.0.1:{p['proxy_healthz']}/healthz", "kube-proxy", 60)

        def both_families_synced() -> bool:
            self._alive_or_raise()
            return all(
                "-j KUBE-FORWARD" in hostnet.ipt(v6, "-S", "FORWARD").stdout for v6 in (False, True)
            )

        self.c.wait_for("kube-proxy's IPv4 and IPv6 rules", both_families_synced, 60)
        hostnet.ensure_guard_first()  # kube-proxy put its jumps at the top of FORWARD/OUTPUT

    def _start_coredns(self) -> None:
        d, p = self.dir, self.c.ports
        (d / "Corefile").write_text(
            f""".:{p["dns"]} {{
    errors
    health 127.0.0.1:{p["dns_health"]}
    ready 127.0.0.1:{p["dns_ready"]}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {d / "coredns.kubeconfig"} rlpost-local
        pods insecure
        ttl 5
    }}
    cache 5
}}
"""
        )
        log("starting CoreDNS (cluster names only)")
        self._spawn("coredns", [f"-conf={d / 'Corefile'}"])
        self.c._wait_http(f"http://127.0.0.1:{p['dns_ready']}/ready", "coredns", 60)
        self.c.apply(_kube_dns(p["dns"]))

    def _node(self) -> dict:
        return self.c.get_json("node", NODE_NAME)

    def _alive_or_raise(self) -> bool:
        self.c._check_alive()
        return True


# ---------------------------------------------------------------------- teardown
def teardown(cluster: LocalCluster, rec: dict) -> None:
    """Stop every pod, the node's processes, and undo prepare(); tolerates partial setups."""
    state, pids = cluster.state, cluster.pids

    def alive(name: str) -> bool:
        return name in pids and _alive(pids[name])

    if rec.get("name") and alive("kubelet") and alive("kube-apiserver"):
        cluster.kubectl(
            "delete", "pods", "-A", f"--field-selector=spec.nodeName={rec['name']}",
            "--grace-period=0", "--force", "--wait=false", check=False, timeout=30,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _cgroup_pids(rec):
            time.sleep(0.5)
    for name in ("coredns", "kube-proxy", "kubelet"):
        if name in pids:
            _stop_pid(pids[name], name)
    if alive("containerd"):
        tasks = ctr(state, "tasks", "ls", "-q", check=False, timeout=30).stdout.split()
        for t in tasks:
            ctr(state, "tasks", "kill", "-s", "SIGKILL", t, check=False, timeout=30)
        time.sleep(0.5 if tasks else 0)
        for t in tasks:
            ctr(state, "tasks", "delete", "-f", t, check=False, timeout=30)
    for pid in _cgroup_pids(rec) + _our_shims(state):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if "containerd" in pids:
        _stop_pid(pids["containerd"], "containerd")
    _unmount_under(state)
    if rec.get("name"):
        subprocess.run(
            [str(bin_dir() / "kube-proxy"), "--cleanup"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    hostnet.teardown(rec, log)
    for d in reversed(rec.get("cgroups", [])):
        _rmdir_tree(Path(d))
    logs = Path("/var/log/containers")  # kubelet's symlinks (a fixed path)
    if logs.is_dir():
        for link in logs.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(str(state)):
                link.unlink()
    for f in Path("/var/lib/cni/results").glob("rlpost-*"):
        f.unlink(missing_ok=True)
    Path("/var/lib/kubelet/device-plugins/kubelet.sock").unlink(missing_ok=True)
    for d in rec.get("host_dirs", []):
        _rmdir_tree(Path(d))
    if rec.get("lock"):
        hostnet.release_lock(state)
    log(f"real node {rec.get('name', '?')} torn down")


def _cgroup_pids(rec: dict) -> list[int]:
    out: set[int] = set()
    for d in rec.get("cgroups", []):
        for root, _dirs, files in os.walk(d):  # the kubelet removes cgroups meanwhile
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):
                    out.update(int(x) for x in Path(root, "cgroup.procs").read_text().split())
    return sorted(out)


def _our_shims(state: Path) -> list[int]:
    sock = str(containerd_socket(state))
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if Path(argv[0]).name == "containerd-shim-runc-v2" and sock in argv:
            found.append(int(p.name))
    return found


def mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if mp.startswith(prefix):
            points.append(mp)
    return points


def _unmount_under(state: Path) -> None:
    for _ in range(5):
        points = mounts_under(state)
        if not points:
            return
        for mp in sorted(points, key=lambda m: m.count("/"), reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True, check=False)
    log(f"mounts left under {state}: {mounts_under(state)}")


def _rmdir_tree(d: Path) -> None:
    """Remove the empty directories of a tree, deepest first (cgroups: only rmdir works)."""
    for root, _dirs, _files in os.walk(d, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(root)


# ---------------------------------------------------------------------- manifests and configs
def _cni_conflist(d: Path) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "rlpost",
        "plugins": [
            {
                "type": "bridge",
                "bridge": hostnet.BRIDGE,
                "isGateway": True,
                "ipMasq": False,  # no masquerade: pod traffic never leaves the machine
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": hostnet.POD_SUBNET, "gateway": hostnet.GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(d / "cni" / "ipam"),
                },
            }
        ],
    }


def _containerd_config(d: Path) -> str:
    sock = d / "containerd.sock"
    return f"""version = 3
root = "{d / "containerd" / "root"}"
state = "{d / "containerd" / "state"}"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt",
  "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{d / "registry"}"

[plugins."io.containerd.transfer.v1.local"]
  config_path = "{d / "registry"}"

[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  # root here lacks CAP_SYS_RESOURCE: never ask runc for an oom_score_adj below ours
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      disable_pause_image_pull = true
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{d / "runc"}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN}"]
    conf_dir = "{d / "cni" / "net.d"}"
    max_conf_num = 1
    use_internal_loopback = true

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def _rbac() -> list[dict]:
    def binding(name: str, role: str, user: str) -> dict:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }

    coredns_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "rlpost:coredns"},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["services", "namespaces", "pods"],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["list", "watch"],
            },
        ],
    }
    return [
        coredns_role,
        binding("rlpost:coredns", "rlpost:coredns", COREDNS_USER),
        # the API server's client cert for kubectl logs/exec (the kubelet's webhook authz)
        binding("rlpost:apiserver-kubelet", "system:kubelet-api-admin", APISERVER_KUBELET_USER),
    ]


def _kube_dns(port: int) -> list[dict]:
    """A selectorless kube-dns Service (10.96.0.10:53) whose EndpointSlice is CoreDNS on the
    host (10.89.0.1:<port>); kube-proxy DNATs pods' queries to it."""
    labels = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "clusterIP": DNS_IP,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": port},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": port},
                ],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-host",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": "cluster.rlpost.dev",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [hostnet.GATEWAY], "conditions": {"ready": True}}],
            "ports": [
                {"name": "dns", "port": port, "protocol": "UDP"},
                {"name": "dns-tcp", "port": port, "protocol": "TCP"},
            ],
        },
    ]
