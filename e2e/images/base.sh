#!/usr/bin/env bash
# A local stand-in for docker.io/library/python:3.11-slim-bookworm (no registry is reachable
# here): debootstrap bookworm (minbase) from the host's Debian mirror, Debian's python3.11 +
# pip + venv, the host's CA certificates and pip/apt configuration, slimmed like the official
# slim images, then imported into buildah's storage under the names the Dockerfiles use.
#
#   e2e/images/base.sh WORKDIR KEY [TAG...]
# WORKDIR: scratch space (removed on exit). KEY: content key, stored as a label.
# Runs as root (debootstrap, chroot, buildah's storage).
set -euo pipefail
work=${1:?workdir}; key=${2:?key}; shift 2
tags=("$@")
[ ${#tags[@]} -gt 0 ] || tags=(docker.io/library/python:3.11-slim-bookworm docker.io/library/python:3.11-slim)
mirror=${RLPOST_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
root=$work/rootfs
log() { echo "[base $(date +%H:%M:%S)] $*"; }
cleanup() {  # never descend into a mount debootstrap left behind (proc, sys)
  if [ -d "$root" ]; then
    findmnt -rn -o TARGET | grep "^$root/" | sort -r | xargs -r -n1 umount -l || true
  fi
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
cleanup; mkdir -p "$work"

log "debootstrap $suite (minbase) from $mirror"
debootstrap --variant=minbase --components=main "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log"; exit 1; }

# Slim: never install docs, man pages, translations (what the official slim images exclude).
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
# apt: the host's sources (deb822) and the container-friendly settings of the Debian images.
rm -f "$root/etc/apt/sources.list"
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/debian.sources"
else
  printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" "$suite" "$suite" "$suite" >"$root/etc/apt/sources.list.d/debian.sources"
fi
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
echo 'Acquire::GzipIndexes "true";' >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
# The host's extra CAs (its HTTPS egress goes through a proxy CA): pip and apt inside builds.
mkdir -p "$root/usr/local/share/ca-certificates"
cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
cp /etc/resolv.conf "$root/etc/resolv.conf"

log "apt: upgrade (bookworm-security/-updates) + python3.11, pip, venv, ca-certificates"
unshare --mount --fork chroot "$root" /bin/sh -euc '
  mount -t proc proc /proc
  export DEBIAN_FRONTEND=noninteractive LC_ALL=C
  apt-get update -qq
  apt-get upgrade -y -qq >/dev/null
  apt-get install -y -qq --no-install-recommends ca-certificates python3.11 python3-pip python3-venv >/dev/null
  update-ca-certificates >/dev/null
  apt-get clean
  umount /proc
' >"$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log"; exit 1; }

log "configure python/pip, slim"
ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python"
ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python3"
ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip3"
rm -f "$root"/usr/lib/python3.11/EXTERNALLY-MANAGED
cat >"$root/etc/pip.conf" <<'CFG'
[global]
cert = /etc/ssl/certs/ca-certificates.crt
timeout = 180
disable-pip-version-check = true
CFG
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
  "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* "$root"/var/tmp/* "$root"/root/.cache
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/groff/* "$root"/usr/share/lintian/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
: >"$root/etc/resolv.conf"
echo localhost >"$root/etc/hostname"

log "tar + import into buildah storage: ${tags[*]}"
tar --numeric-owner --xattrs -C "$root" -cf "$work/rootfs.tar" .
ctr=$(buildah from --pull=never scratch)
buildah add --quiet "$ctr" "$work/rootfs.tar" / >/dev/null
buildah config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 --env PYTHON_VERSION="$(chroot "$root" python3.11 -c 'import platform; print(platform.python_version())')" \
  --cmd '["python3"]' --os linux --arch amd64 \
  --label org.opencontainers.image.description="local stand-in for python:3.11-slim-bookworm (debootstrap $suite)" \
  --label rlpost.images.key="$key" "$ctr"
buildah commit --quiet --rm "$ctr" "${tags[0]}" >/dev/null
for t in "${tags[@]:1}"; do buildah tag "${tags[0]}" "$t"; done
log "done: $(du -sh "$work/rootfs.tar" | cut -f1) rootfs"
