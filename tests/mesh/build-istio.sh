#!/usr/bin/env bash
# Builds istiod (pilot-discovery) and pilot-agent at the version tests/mesh/istio/go.mod pins,
# into build/istio/<version>/, next to the Envoy bootstrap template pilot-agent fills in (an
# Istio image ships it as /var/lib/istio/envoy/envoy_bootstrap_tmpl.json). Go keeps its build cache (go env GOCACHE), so a rebuild after the
# folder is deleted takes seconds; the first build takes minutes (README, "Testing").
# Usage: tests/mesh/build-istio.sh            (prints the output folder)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
version="$(awk '$1 == "istio.io/istio" && $2 ~ /^v/ {print $2; exit}' "$here/istio/go.mod")"
if [[ -z "$version" ]]; then
  echo "no istio.io/istio requirement in $here/istio/go.mod" >&2
  exit 1
fi
out="$root/build/istio/$version"

command -v go >/dev/null || { echo "go not found: install Go 1.26 or newer" >&2; exit 1; }

mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cd "$here/istio"
# -mod=readonly: build exactly what the committed go.sum pins. -s -w: no symbol tables (the
# binaries are ~190 MB with them).
go build -mod=readonly -trimpath -ldflags "-s -w" -o "$tmp/" \
  istio.io/istio/pilot/cmd/pilot-discovery istio.io/istio/pilot/cmd/pilot-agent
cp "$(go list -mod=readonly -m -f '{{.Dir}}' istio.io/istio)/tools/packaging/common/envoy_bootstrap.json" "$tmp/"
chmod 644 "$tmp/envoy_bootstrap.json"
mv "$tmp/pilot-discovery" "$tmp/pilot-agent" "$tmp/envoy_bootstrap.json" "$out/"
echo "$out"
