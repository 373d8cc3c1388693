#!/usr/bin/env bash
# Installs the Debian packages Weft's build, tests and lab need, only when missing. Idempotent.
set -euo pipefail
want=(containernetworking-plugins podman runc containerd iptables iproute2 iputils-ping netcat-openbsd libsqlite3-0 sqlite3 nftables libnftables1 iperf3 tcpdump procps psmisc time python3 etcd-server etcd-client conntrack clang libbpf-dev libbpf1 "$@")
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
