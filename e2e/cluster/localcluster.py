"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager,
scheduler, Kueue (with its webhooks) and kwok fake GPU nodes; with `real_node=True` also a
real node that runs containers (node.py: containerd, kubelet, kube-proxy, CoreDNS).

Every process is started by pid and recorded in `<state>/cluster.json`; `down()` ends
exactly those processes and removes the state directory. Ports are picked free at start,
so two clusters can run side by side.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlpost.ports import free_port

from . import addons
from . import node as real_node_mod
from .addons import GPU, GPU_B_TAINT, GPUS_PER_NODE, NODE_GROUPS, fake_gpu_node
from .certs import make_certs
from .paths import REPO, bin_dir, missing_binaries
from .procs import _alive, _stop_pid, log

__all__ = [
    "GPU",
    "GPUS_PER_NODE",
    "GPU_B_TAINT",
    "NODE_GROUPS",
    "LocalCluster",
    "_alive",
    "default_state_dir",
    "fake_gpu_node",
    "free_port",
    "log",
]

ADMIN_TOKEN_NAME = "admin-token"


def default_state_dir() -> Path:
    return Path(os.environ.get("RLPOST_CLUSTER_DIR", REPO / ".cluster"))


class GiveUp(AssertionError):
    """Raised by a wait_for predicate when what it waits for can no longer happen (the job
    Failed): the wait ends at once with this error instead of at its timeout."""


@dataclass
class LocalCluster:
    state: Path
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    real_node: bool = False
    node: dict = field(default_factory=dict)  # what node.py set up (for down, from any process)
    # Off by default (the test suites leave them so), for benchmarks: Kueue integrations
    # besides batch/job (e.g. "ray.io/rayjob"), CRD files or folders served before Kueue
    # starts (what those integrations watch), extra kube-controller-manager flags.
    kueue_frameworks: tuple[str, ...] = ()
    extra_crds: tuple[Path, ...] = ()
    kcm_args: tuple[str, ...] = ()

    # ------------------------------------------------------------------ accessors
    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def token(self) -> str:
        return (self.state / ADMIN_TOKEN_NAME).read_text().strip()

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses that talk to this cluster (kubectl, helm, operator)."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{bin_dir()}:{os.environ.get('PATH', '')}",
            "HELM_CACHE_HOME": str(self.state / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(self.state / "helm" / "config"),
            "HELM_DATA_HOME": str(self.state / "helm" / "data"),
        }

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(bin_dir() / "kubectl"), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    def helm(self, *args: str, check: bool = True, timeout: float = 120):
        proc = subprocess.run(
            [str(bin_dir() / "helm"), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    def apply(self, manifest: str | dict | list, server_side: bool = True) -> str:
        if not isinstance(manifest, str):
            docs = manifest if isinstance(manifest, list) else [manifest]
            manifest = yaml.safe_dump_all(docs)
        args = ["apply", "-f", "-"]
        if server_side:
            args += ["--server-side", "--force-conflicts", "--field-manager=rlpost-tests"]
        return self.kubectl(*args, input=manifest).stdout

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def create_token(self, service_account: str, namespace: str, duration: str = "1h") -> str:
        return self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()

    def kubeconfig_for_token(self, token: str, path: Path) -> Path:
        """A kubeconfig that authenticates with `token` (e.g. a ServiceAccount's)."""
        path.write_text(yaml.safe_dump(self._kubeconfig_doc(token)))
        return path

    def wait_for(self, what: str, predicate, timeout: float = 60, interval: float = 0.5):
        """Poll `predicate` until it returns something truthy. An exception means "not yet"
        (the object may not exist yet), except GiveUp: the wait can no longer succeed."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
            except GiveUp:
                raise
            except Exception as exc:  # the object may not exist yet
                last = exc
            if last and not isinstance(last, Exception):
                return last
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")

    # ------------------------------------------------------------------ lifecycle
    def up(self) -> LocalCluster:
        missing = missing_binaries()
        if missing:
            raise RuntimeError(
                f"control-plane binaries missing in {bin_dir()}: {missing}. "
                "Run `make cluster-bins` (bash e2e/cluster/build.sh) first."
            )
        if (self.state / "cluster.json").exists():
            raise RuntimeError(
                f"a cluster is already recorded in {self.state}; run `make cluster-down` first"
            )
        self.state.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            self._start_all()
        except BaseException:
            log("start failed; stopping what was started")
            self.down()
            raise
        log(f"cluster ready in {time.monotonic() - t0:.1f}s; KUBECONFIG={self.kubeconfig}")
        return self

    def _start_all(self) -> None:
        for name in ("etcd", "etcd_peer", "apiserver", "kcm", "scheduler", "webhook", "health"):
            self.ports[name] = free_port()
        certs = make_certs(self.state / "pki")
        token = os.urandom(16).hex()
        (self.state / ADMIN_TOKEN_NAME).write_text(token)
        self.kubeconfig.write_text(yaml.safe_dump(self._kubeconfig_doc(token)))
        self._save()
        node = real_node_mod.RealNode(self) if self.real_node else None
        extra = node.prepare(certs) if node else []  # bridge 10.89.0.1 before the API server
        lines = [f'{token},admin,admin,"system:masters"', *extra]
        (self.state / "tokens.csv").write_text("\n".join(lines) + "\n")

        log("starting etcd")
        self._spawn("etcd", self._etcd_args())
        log("starting kube-apiserver")
        args = self._apiserver_args(certs)
        self._spawn("kube-apiserver", node.apiserver_args(args, certs) if node else args)
        self._wait_http(f"{self.server}/readyz", "kube-apiserver", timeout=90)
        log("starting kube-controller-manager and kube-scheduler")
        self._spawn("kube-controller-manager", self._kcm_args(certs))
        self._spawn("kube-scheduler", self._scheduler_args())
        addons.install_kueue(self, certs)
        addons.start_kwok(self, certs)
        self.wait_for(
            "the default ServiceAccount",
            lambda: (
                self.kubectl("get", "sa", "default", "-n", "default", check=False).returncode == 0
            ),
            timeout=60,
        )
        if node:
            node.start()

    def down(self) -> None:
        """Stop exactly the processes this cluster started, then remove its state."""
        data = self._load()
        pids = self.pids = data.get("pids", self.pids)
        self.ports = data.get("ports", self.ports)
        if data.get("node"):  # pods, node processes, host networking first
            real_node_mod.teardown(self, data["node"])
        for name in reversed(list(pids)):
            _stop_pid(pids[name], name)
        if self.state.exists():
            subprocess.run(["rm", "-rf", str(self.state)], check=False)
        log(f"cluster in {self.state} stopped")

    @classmethod
    def load(cls, state: Path) -> LocalCluster:
        data = json.loads((state / "cluster.json").read_text())
        node = data.get("node", {})
        return cls(state, ports=data["ports"], pids=data["pids"], real_node=bool(node), node=node)

    # ------------------------------------------------------------------ components
    def _etcd_args(self) -> list[str]:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd_peer']}"
        return [
            "--name=default",
            f"--data-dir={self.state / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync",
            "--quota-backend-bytes=4294967296",
            "--log-level=warn",
        ]

    def _apiserver_args(self, c: dict[str, Path]) -> list[str]:
        return [
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['apiserver']}",
            f"--tls-cert-file={c['cert']}",
            f"--tls-private-key-file={c['key']}",
            f"--client-ca-file={c['ca']}",
            f"--token-auth-file={self.state / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={c['sa_pub']}",
            f"--service-account-signing-key-file={c['sa_key']}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--v=0",
        ]

    def _manager_common(self) -> list[str]:
        k = str(self.kubeconfig)
        return [
            f"--kubeconfig={k}",
            f"--authentication-kubeconfig={k}",
            f"--authorization-kubeconfig={k}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
        ]

    def _kcm_args(self, c: dict[str, Path]) -> list[str]:
        return [
            *self._manager_common(),
            f"--secure-port={self.ports['kcm']}",
            f"--service-account-private-key-file={c['sa_key']}",
            f"--root-ca-file={c['ca']}",
            f"--cluster-signing-cert-file={c['ca']}",
            f"--cluster-signing-key-file={c['ca'].with_name('ca.key')}",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
            "--concurrent-statefulset-syncs=10",
            "--concurrent-deployment-syncs=10",
            *self.kcm_args,
        ]

    def _scheduler_args(self) -> list[str]:
        return [*self._manager_common(), f"--secure-port={self.ports['scheduler']}"]

    # ------------------------------------------------------------------ helpers
    def _kubeconfig_doc(self, token: str) -> dict:
        ca = (self.state / "pki" / "ca.crt").read_bytes()
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "rlpost-local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(ca).decode(),
                    },
                }
            ],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [
                {"name": "rlpost-local", "context": {"cluster": "rlpost-local", "user": "user"}}
            ],
            "current-context": "rlpost-local",
        }

    def _spawn(self, binary: str, args: list[str], env: dict | None = None) -> None:
        logs = self.state / "logs"
        logs.mkdir(exist_ok=True)
        out = open(logs / f"{binary}.log", "ab")  # noqa: SIM115 - the child keeps it open
        proc = subprocess.Popen(
            [str(bin_dir() / binary), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**(env or os.environ), "KUBECONFIG": str(self.kubeconfig)},
            cwd=self.state,
            start_new_session=True,  # survives `make cluster` returning; stopped by pid
        )
        self.pids[binary] = proc.pid
        self._save()
        time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"{binary} exited at once; see {logs / (binary + '.log')}")

    def _wait_http(self, url: str, what: str, timeout: float) -> None:
        ctx = ssl.create_default_context(cafile=str(self.state / "pki" / "ca.crt"))
        headers = {"Authorization": f"Bearer {self.token}"} if url.startswith("https") else {}

        def ok() -> bool:
            self._check_alive()
            req = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(req, context=ctx, timeout=2) as r:
                return r.status == 200

        self.wait_for(what, ok, timeout=timeout)

    def _wait_tcp(self, port: int, what: str, timeout: float) -> None:
        def ok() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True

        self.wait_for(what, ok, timeout=timeout)

    def _check_alive(self) -> None:
        for name, pid in self.pids.items():
            if not _alive(pid):
                tail = (self.state / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} (pid {pid}) died:\n{tail}")

    def _save(self) -> None:
        (self.state / "cluster.json").write_text(
            json.dumps(
                {"ports": self.ports, "pids": self.pids, "bin": str(bin_dir()), "node": self.node},
                indent=1,
            )
        )

    def _load(self) -> dict:
        try:
            return json.loads((self.state / "cluster.json").read_text())
        except FileNotFoundError:
            return {}
