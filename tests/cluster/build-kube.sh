#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager at the version tests/cluster/kube/go.mod
# pins, into build/kube/<version>/. Go keeps its build cache (go env GOCACHE), so a
# rebuild after the folder is deleted takes seconds, not minutes.
# Usage: tests/cluster/build-kube.sh            (prints the output folder)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/kube/go.mod")"
if [[ -z "$version" ]]; then
  echo "no k8s.io/kubernetes requirement in $here/kube/go.mod" >&2
  exit 1
fi
minor="$(echo "$version" | cut -d. -f2)"
out="$root/build/kube/$version"

command -v go >/dev/null || { echo "go not found: install Go 1.26 or newer" >&2; exit 1; }

# What `kube-apiserver --version` reports and what the API server serves at /version.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cd "$here/kube"
# -mod=readonly: build exactly what the committed go.sum pins.
go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
mv "$tmp/kube-apiserver" "$tmp/kube-controller-manager" "$out/"
echo "$out"
