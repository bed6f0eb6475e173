#!/usr/bin/env bash
# Debian packages the test suite uses for real. Installs only what is missing.
# The real node (e2e/cluster/node.py) needs runc, the CNI plugins (bridge, host-local,
# portmap, loopback in /usr/lib/cni), iptables, conntrack, gcc + static libc (the pause
# image) and busybox-static (the node tests' image).
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The production images (e2e/images): daemonless builds and the local base image.
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[ -x /usr/sbin/runc ] || need+=(runc)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
[ -x /bin/busybox ] && /bin/busybox --list | grep -x httpd >/dev/null || need+=(busybox-static)
[ ${#need[@]} -eq 0 ] && exit 0
echo "[system-deps] installing ${need[*]} (Debian packages)"
sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
$sudo_ apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
