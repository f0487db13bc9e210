#!/usr/bin/env bash
# Stops the control plane `cluster-up.sh` started, from the pids file it wrote.
# Usage: tests/cluster/cluster-down.sh [dir]   (default: build/cluster)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="${1:-$root/build/cluster}"
pids_file="$dir/pids"

if [[ ! -f "$pids_file" ]]; then
  echo "no control plane recorded in $pids_file: nothing to stop"
  exit 0
fi

# Only signal a pid that still runs the program we started (pids get reused).
ours() { # name pid
  [[ -r "/proc/$2/cmdline" ]] && tr '\0' ' ' <"/proc/$2/cmdline" | grep -q -- "$1"
}

# Reverse start order: controller manager, API server, etcd.
mapfile -t entries < <(tac "$pids_file")
for entry in "${entries[@]}"; do
  read -r name pid <<<"$entry"
  if ours "$name" "$pid"; then
    kill -TERM "$pid"
    for _ in $(seq 100); do ours "$name" "$pid" || break; sleep 0.1; done
    if ours "$name" "$pid"; then kill -KILL "$pid"; fi
    echo "stopped $name (pid $pid)"
  fi
done
rm -f "$pids_file"
