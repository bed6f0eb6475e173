"""Host networking for the real node: our bridge, blackhole routes, guard chains, sysctls.

Safety rules (nothing of ours may leave the machine):
- pods live on bridge `rlpost0` (10.89.0.1/24); 10.89.0.0/16, the Service CIDR and kwok's
  pod CIDR get `blackhole` routes, so a packet to them never follows the default route;
- chain RLPOST-EGRESS-GUARD (jumped first from FORWARD and OUTPUT) DROPs and counts every
  packet from those CIDRs, or in from our bridge, that would go out of an interface that
  carries a default route (detected, not hard-coded); no masquerade rule of ours exists;
- chain RLPOST-INGRESS-GUARD (from INPUT and FORWARD) drops packets from those interfaces
  to our CIDRs and to the ports the node opens on all addresses (API server, CoreDNS), and
  anything they would have us forward: ip_forward is on while the node runs.
Every change is recorded (`rec`, saved in cluster.json) before it is made, so `teardown`
undoes exactly what `setup` did, from any process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
from pathlib import Path

BRIDGE = "rlpost0"
GATEWAY = "10.89.0.1"
POD_SUBNET = "10.89.0.0/24"  # host-local hands out pod IPs from here
POD_CIDR = "10.89.0.0/16"  # kube-proxy's cluster CIDR; blackholed beyond the /24
SERVICE_CIDR = "10.96.0.0/16"
KWOK_CIDR = "10.244.0.0/16"
GUARDED = (POD_CIDR, SERVICE_CIDR, KWOK_CIDR)
EGRESS = "RLPOST-EGRESS-GUARD"
INGRESS = "RLPOST-INGRESS-GUARD"
LOCK = Path("/run/rlpost-real-node.lock")
# Values we set (ip_forward, bridge netfilter) or that kubelet / kube-proxy may change.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/ipv4/conf/all/route_localnet",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def ipt(v6: bool, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip6tables" if v6 else "iptables", "-w", "5", *args, check=check)


# ---------------------------------------------------------------- one real node per machine
def acquire_lock(state: Path) -> None:
    """Refuse a second real node on this machine (bridge, routes and KUBE-* chains are global)."""
    for _ in range(2):
        try:
            fd = os.open(LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(LOCK.read_text())["state"]
            except (OSError, ValueError, KeyError):
                owner = "?"
            if Path(owner, "cluster.json").exists():
                raise RuntimeError(
                    f"a real node already runs on this machine (cluster state {owner}); only "
                    f"one at a time: `python -m e2e.cluster down --state {owner}` first"
                ) from None
            LOCK.unlink(missing_ok=True)  # its cluster is gone: a stale lock
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"state": str(state), "pid": os.getpid()}, f)
        if link_exists(BRIDGE):
            LOCK.unlink(missing_ok=True)
            raise RuntimeError(
                f"bridge {BRIDGE} already exists (left by an earlier real node?); "
                f"remove it with `ip link del {BRIDGE}`"
            )
        return
    raise RuntimeError(f"could not take {LOCK}")


def release_lock(state: Path) -> None:
    with contextlib.suppress(OSError, ValueError, KeyError):
        if json.loads(LOCK.read_text())["state"] == str(state):
            LOCK.unlink()


# ---------------------------------------------------------------- facts
def link_exists(name: str) -> bool:
    return run("ip", "link", "show", "dev", name, check=False).returncode == 0


def outward_interfaces() -> list[str]:
    """Interfaces that carry a default route (IPv4 or IPv6): the way off the machine."""
    devs: set[str] = set()
    for fam in ("-4", "-6"):
        out = run("ip", "-j", fam, "route", "show", "default", check=False).stdout or "[]"
        devs.update(r["dev"] for r in json.loads(out) if r.get("dev"))
    if not devs:
        raise RuntimeError("no default route found: cannot tell the outward interface")
    return sorted(devs)


def egress_counters() -> dict[str, int]:
    """Packets dropped by each rule of RLPOST-EGRESS-GUARD (IPv4 and IPv6), by rule text."""
    out: dict[str, int] = {}
    for v6 in (False, True):
        lines = ipt(v6, "-L", EGRESS, "-n", "-v", "-x", check=False).stdout.splitlines()[2:]
        for line in lines:
            f = line.split()
            out[("ip6 " if v6 else "ip4 ") + " ".join(f[2:])] = int(f[0])
    return out


# ---------------------------------------------------------------- setup
def _sysctl(name: str, value: str | None = None) -> str | None:
    p = Path("/proc/sys") / name
    if value is None:
        return p.read_text().strip() if p.exists() else None
    p.write_text(value)
    return value


def setup(rec: dict, save, open_ports: dict[str, list[int]]) -> None:
    """Bridge, routes, guard chains and sysctls. `save()` persists `rec` after each step.

    open_ports: {"tcp": [...], "udp": [...]} ports our processes bind on all addresses."""
    rec["sysctls"] = {n: _sysctl(n) for n in SYSCTLS if _sysctl(n) is not None}
    save()
    _sysctl("net/ipv4/ip_forward", "1")
    _sysctl("net/bridge/bridge-nf-call-iptables", "1")

    rec["bridge"] = BRIDGE
    save()
    run("ip", "link", "add", BRIDGE, "type", "bridge")
    run("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")

    rec["routes"] = []
    for cidr in GUARDED:
        rec["routes"].append(cidr)
        save()
        run("ip", "route", "replace", "blackhole", cidr)

    out = outward_interfaces()
    rec["outward"] = out
    rec["chains"] = []
    for v6 in (False, True):
        for chain in (EGRESS, INGRESS):
            rec["chains"].append([v6, chain])
            save()
            ipt(v6, "-N", chain)
        for dev in out:
            if not v6:
                for cidr in GUARDED:
                    ipt(v6, "-A", EGRESS, "-s", cidr, "-o", dev, "-j", "DROP")
                    ipt(v6, "-A", INGRESS, "-i", dev, "-d", cidr, "-j", "DROP")
            ipt(v6, "-A", EGRESS, "-i", BRIDGE, "-o", dev, "-j", "DROP")
            ipt(v6, "-A", INGRESS, "-i", dev, "-o", dev, "-j", "DROP")  # no routing for others
            for proto, ports in open_ports.items():
                for port in ports:
                    rule = ("-i", dev, "-p", proto, "--dport", str(port), "-j", "DROP")
                    ipt(v6, "-A", INGRESS, *rule)
    ensure_guard_first()


def ensure_guard_first() -> None:
    """(Re)insert our jumps at position 1 (kube-proxy inserts its own jumps at the top, and
    its KUBE-FORWARD ACCEPTs would otherwise run before our guard)."""
    for v6 in (False, True):
        for parent, chain in (
            ("FORWARD", EGRESS),
            ("OUTPUT", EGRESS),
            ("FORWARD", INGRESS),
            ("INPUT", INGRESS),
        ):
            while ipt(v6, "-D", parent, "-j", chain, check=False).returncode == 0:
                pass
        for parent, chain in (("FORWARD", INGRESS), ("INPUT", INGRESS)):
            ipt(v6, "-I", parent, "1", "-j", chain)
        for parent in ("FORWARD", "OUTPUT"):
            ipt(v6, "-I", parent, "1", "-j", EGRESS)


def guard_is_first() -> bool:
    for v6 in (False, True):
        for parent in ("FORWARD", "OUTPUT"):
            rules = ipt(v6, "-S", parent).stdout.splitlines()
            if len(rules) < 2 or rules[1] != f"-A {parent} -j {EGRESS}":
                return False
    return True


# ---------------------------------------------------------------- teardown
def kube_chains() -> list[tuple[bool, str, str]]:
    """Every KUBE-*/CNI-* chain in every table (kubelet's canaries, kube-proxy's rules)."""
    found = []
    for v6 in (False, True):
        for table in ("filter", "nat", "mangle", "raw"):
            rules = ipt(v6, "-t", table, "-S", check=False).stdout.splitlines()
            for r in rules:
                f = r.split()
                if f[:1] == ["-N"] and f[1].startswith(("KUBE-", "CNI-")):
                    found.append((v6, table, f[1]))
    return found


def our_chains() -> list[tuple[bool, str, str]]:
    found = []
    for v6 in (False, True):
        for r in ipt(v6, "-S", check=False).stdout.splitlines():
            f = r.split()
            if f[:1] == ["-N"] and f[1].startswith("RLPOST-"):
                found.append((v6, "filter", f[1]))
    return found


def delete_chains(chains: list[tuple[bool, str, str]]) -> None:
    """Remove every rule that jumps to these chains, then flush and delete them."""
    names = {(v6, t): set() for v6, t, _ in chains}
    for v6, t, c in chains:
        names[(v6, t)].add(c)
    for (v6, table), cs in names.items():
        for r in ipt(v6, "-t", table, "-S", check=False).stdout.splitlines():
            f = shlex.split(r)
            if f[:1] == ["-A"] and "-j" in f and f[f.index("-j") + 1] in cs:
                ipt(v6, "-t", table, "-D", *f[1:], check=False)
        for c in cs:
            ipt(v6, "-t", table, "-F", c, check=False)
        for c in cs:
            ipt(v6, "-t", table, "-X", c, check=False)


def teardown(rec: dict, log) -> None:
    """Undo `setup` (tolerates a partial setup) after the node's processes are gone."""
    bridge = rec.get("bridge")
    if bridge:
        out = run("ip", "-j", "link", "show", "master", bridge, check=False).stdout or "[]"
        for link in json.loads(out):
            run("ip", "link", "del", link["ifname"], check=False)
        run("ip", "link", "del", bridge, check=False)
    for cidr in rec.get("routes", []):
        run("ip", "route", "del", "blackhole", cidr, check=False)
    delete_chains([(v6, "filter", c) for v6, c in rec.get("chains", [])])
    delete_chains(kube_chains())
    for name, value in rec.get("sysctls", {}).items():
        if value is not None and _sysctl(name) != value:
            try:
                _sysctl(name, value)
            except OSError as exc:
                log(f"could not restore sysctl {name}={value}: {exc}")
