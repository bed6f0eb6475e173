#!/usr/bin/env bash
# Build KubeRay's Go operator (ray-operator) from the Go module proxy into a cache outside
# the repo, for benchmarks/peer_kuberay.py. Not part of `make test`.
# Idempotent: skips the build when the binary exists. Same caches and flags as
# e2e/cluster/build.sh's wrapper_build (a small wrapper module that requires the operator's
# module; go.sum seeded with the module's own).
#   RLPOST_CACHE (default ~/.cache/rlpost): peer/ray-operator-<version>, gomod/, gobuild/.
# Prints the binary's path on stdout; progress goes to stderr.
set -euo pipefail
version=${KUBERAY_VERSION:-v1.5.0}
mod=github.com/ray-project/kuberay/ray-operator
cache=${RLPOST_CACHE:-$HOME/.cache/rlpost}
out="$cache/peer/ray-operator-$version"

export GOTOOLCHAIN=local CGO_ENABLED=0
export GOMODCACHE=${GOMODCACHE_OVERRIDE:-$cache/gomod}
export GOCACHE=${GOCACHE_OVERRIDE:-$cache/gobuild}
export GOFLAGS=-mod=mod

step() { printf '[kuberay-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ ! -x "$out" ]; then
  w="$cache/wrapper/kuberay-$version"
  mkdir -p "$w" "$cache/peer"
  printf 'module rlpost.dev/build/kuberay\n\ngo 1.26\n\nrequire %s %s\n' "$mod" "$version" > "$w/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$mod" > "$w/tools.go"
  step "resolving $mod $version"
  src=$(cd "$w" && go mod download -json "$mod@$version" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
  [ -f "$src/go.sum" ] && cp "$src/go.sum" "$w/go.sum"
  (cd "$w" && { go mod tidy -e >/dev/null 2>&1 || true; } && go mod download) >&2
  step "building ray-operator $version"
  (cd "$w" && go build -trimpath -ldflags "-s -w" -o "$out.tmp" "$mod") >&2
  mv "$out.tmp" "$out"
fi
# The CRDs (config/crd/bases) come from the same module source.
go mod download -json "$mod@$version" >/dev/null
echo "$out"
