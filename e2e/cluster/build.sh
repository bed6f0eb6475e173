#!/usr/bin/env bash
# Build the local control plane from Go modules into a cache outside the repo.
# Idempotent: a binary that is already in the cache is not rebuilt.
#   RLPOST_CACHE (default ~/.cache/rlpost) holds bin/<key>/, the Go module and build caches.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
source "$here/versions.env"

cache=${RLPOST_CACHE:-$HOME/.cache/rlpost}
key="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kueue-${KUEUE_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
key="${key}_containerd-${CONTAINERD_VERSION}_coredns-${COREDNS_VERSION}"
bin="$cache/bin/$key"
mkdir -p "$bin"

export GOTOOLCHAIN=local CGO_ENABLED=0
export GOMODCACHE=${GOMODCACHE_OVERRIDE:-$cache/gomod}
export GOCACHE=${GOCACHE_OVERRIDE:-$cache/gobuild}
export GOFLAGS=-mod=mod

step() { printf '[cluster-build %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
have() { for b in "$@"; do [ -x "$bin/$b" ] || return 1; done; }

# --- Kubernetes + etcd: one wrapper module, one `go build` so shared packages compile once.
if ! have kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy etcd; then
  w="$cache/wrapper/$key"
  mkdir -p "$w"
  staging="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
    cluster-bootstrap code-generator component-base component-helpers controller-manager
    cri-api cri-client cri-streaming csi-translation-lib dynamic-resource-allocation
    endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy
    kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
    sample-apiserver sample-cli-plugin sample-controller streaming"
  {
    echo "module rlpost.dev/localcluster"
    echo
    echo "go 1.26"
    echo
    echo "require ("
    echo "	k8s.io/kubernetes ${K8S_VERSION}"
    echo "	go.etcd.io/etcd/server/v3 ${ETCD_VERSION}"
    echo ")"
    echo
    echo "replace ("
    for m in $staging; do echo "	k8s.io/$m => k8s.io/$m ${K8S_STAGING_VERSION}"; done
    echo ")"
  } > "$w/go.mod"
  cat > "$w/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
  step "resolving Kubernetes ${K8S_VERSION} + etcd ${ETCD_VERSION} modules"
  (cd "$w" && go mod tidy -e >/dev/null 2>&1 || true; cd "$w" && go mod download)
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  ld="-s -w -X k8s.io/component-base/version.gitVersion=${K8S_VERSION}"
  ld="$ld -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor}"
  ld="$ld -X k8s.io/component-base/version.gitTreeState=clean"
  ld="$ld -X k8s.io/client-go/pkg/version.gitVersion=${K8S_VERSION}"
  step "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy, etcd (the long step)"
  (cd "$w" && go build -trimpath -ldflags "$ld" -o "$bin/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
  (cd "$w" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
  step "kubernetes + etcd built"
fi

# Kueue, kwok and Helm: each in its own small wrapper module (its own dependency graph).
# `go install mod@version` is not used: it asks the proxy for the module's version list,
# which the proxy here refuses.
wrapper_build() { # name module version package [extra ldflags]
  local name=$1 mod=$2 version=$3 pkg=$4 ldx=${5:-}
  if have "$name"; then return 0; fi
  local w="$cache/wrapper/$name-$version"
  mkdir -p "$w"
  printf 'module rlpost.dev/build/%s\n\ngo 1.26\n\nrequire %s %s\n' "$name" "$mod" "$version" > "$w/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$pkg" > "$w/tools.go"
  step "resolving $name ($mod $version)"
  # Seed go.sum with the module's own: some of its dependencies (e.g. Kueue's
  # scheduler-library pre-release) are unknown to the checksum database.
  local src
  src=$(cd "$w" && go mod download -json "$mod@$version" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
  [ -f "$src/go.sum" ] && cp "$src/go.sum" "$w/go.sum"
  (cd "$w" && go mod tidy -e >/dev/null 2>&1 || true; cd "$w" && go mod download)
  step "building $name"
  (cd "$w" && go build -trimpath -ldflags "-s -w $ldx" -o "$bin/$name" "$pkg")
}
wrapper_build kueue sigs.k8s.io/kueue "$KUEUE_VERSION" sigs.k8s.io/kueue/cmd/kueue \
  "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
wrapper_build kwok sigs.k8s.io/kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
wrapper_build helm helm.sh/helm/v4 "$HELM_VERSION" helm.sh/helm/v4/cmd/helm \
  "-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean"

# The real node's runtime: containerd v2 (daemon, runc shim, ctr for image import) from its
# module; runc and the CNI plugins are Debian's (e2e/system_deps.sh).
if ! have containerd containerd-shim-runc-v2 ctr; then
  w="$cache/wrapper/containerd-$CONTAINERD_VERSION"
  mod=github.com/containerd/containerd/v2
  mkdir -p "$w"
  printf 'module rlpost.dev/build/containerd\n\ngo 1.26\n\nrequire %s %s\n' "$mod" "$CONTAINERD_VERSION" > "$w/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "%s/cmd/containerd"\n\t_ "%s/cmd/containerd-shim-runc-v2"\n\t_ "%s/cmd/ctr"\n)\n' "$mod" "$mod" "$mod" > "$w/tools.go"
  step "resolving containerd $CONTAINERD_VERSION"
  src=$(cd "$w" && go mod download -json "$mod@$CONTAINERD_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
  [ -f "$src/go.sum" ] && cp "$src/go.sum" "$w/go.sum"
  (cd "$w" && go mod tidy -e >/dev/null 2>&1 || true; cd "$w" && go mod download)
  step "building containerd, containerd-shim-runc-v2, ctr"
  (cd "$w" && go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
      -ldflags "-s -w -X $mod/version.Version=$CONTAINERD_VERSION" -o "$bin/" \
      "$mod/cmd/containerd" "$mod/cmd/containerd-shim-runc-v2" "$mod/cmd/ctr")
fi

# CoreDNS from its module, with only the plugins a cluster DNS needs (no `forward`: the
# cluster's DNS answers cluster names only). Same registration as its plugin.cfg build.
if ! have coredns; then
  w="$cache/wrapper/coredns-$COREDNS_VERSION"
  mod=github.com/coredns/coredns
  mkdir -p "$w"
  printf 'module rlpost.dev/build/coredns\n\ngo 1.26\n\nrequire %s %s\n' "$mod" "$COREDNS_VERSION" > "$w/go.mod"
  cat > "$w/main.go" <<'GO'
// CoreDNS with the plugins of a cluster DNS (kubernetes, cache, health, ready, errors, log).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{"errors", "log", "health", "ready", "kubernetes", "cache", "loop"}
}

func main() { coremain.Run() }
GO
  step "resolving coredns $COREDNS_VERSION"
  src=$(cd "$w" && go mod download -json "$mod@$COREDNS_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
  [ -f "$src/go.sum" ] && cp "$src/go.sum" "$w/go.sum"
  (cd "$w" && go mod tidy -e >/dev/null 2>&1 || true; cd "$w" && go mod download)
  step "building coredns"
  (cd "$w" && go build -trimpath -ldflags "-s -w" -o "$bin/coredns" .)
fi

# Kueue's and kwok's manifests come from their module sources (CRDs, webhooks, stages).
for m in "sigs.k8s.io/kueue@${KUEUE_VERSION}" "sigs.k8s.io/kwok@${KWOK_VERSION}"; do
  go mod download -json "$m" >/dev/null
done
step "all binaries ready in $bin"
# The binaries are what is kept: the Go build cache (about 8 GB) only speeds up a rebuild,
# which a version bump does from the module cache anyway. Dropped, so that the real node's
# images (17 GiB unpacked in containerd) fit on a small disk.
if [ -z "${GOCACHE_OVERRIDE:-}" ] && [ -d "$GOCACHE" ]; then
  step "dropping the Go build cache ($(du -sh "$GOCACHE" | cut -f1))"
  chmod -R u+w "$GOCACHE" 2>/dev/null || true
  rm -rf "$GOCACHE"
fi
echo "$bin"
