#!/usr/bin/env bash
# Starts etcd, kube-apiserver and kube-controller-manager on free 127.0.0.1 ports with
# Istio's CRDs installed, and leaves them running. The admin kubeconfig is
# <dir>/kubeconfig; `cluster-down.sh` stops them.
#
# It runs the same code the tests use (the wasm-canary-cluster crate), so the flags,
# certificates (openssl) and readiness checks live in one place: tests/cluster/src.
# Usage: tests/cluster/cluster-up.sh [dir]   (default: build/cluster)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="${1:-$root/build/cluster}"

if [[ -f "$dir/pids" ]]; then
  echo "a control plane may still be running (see $dir/pids); stopping it first"
  "$root/tests/cluster/cluster-down.sh" "$dir"
fi

cd "$root"
cargo build --quiet -p wasm-canary-cluster --bin wasm-canary-cluster
exec "${CARGO_TARGET_DIR:-$root/target}/debug/wasm-canary-cluster" up "$dir"
