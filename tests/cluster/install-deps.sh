#!/usr/bin/env bash
# Installs what the control-plane tests need besides Rust and Go: etcd (Debian package
# etcd-server) and openssl. Does nothing when both are on PATH.
set -euo pipefail

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v openssl >/dev/null || missing+=(openssl)
if ((${#missing[@]} == 0)); then
  exit 0
fi

sudo=()
if [[ "$(id -u)" != 0 ]]; then sudo=(sudo); fi
echo "installing ${missing[*]} with apt-get"
"${sudo[@]}" apt-get update
# etcd-server would start a system etcd on 127.0.0.1:2379 through systemd; the tests
# start their own etcd on free ports and do not need it.
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
