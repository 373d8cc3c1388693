#!/usr/bin/env bash
# Builds weft-libcni-client offline from Debian's libcni sources into $1 (default /var/cache/weft/weft-libcni-client).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-/var/cache/weft/weft-libcni-client}
"$here/../install-deps.sh" golang-go golang-github-appc-cni-dev
mkdir -p "$(dirname "$out")"
if [ ! -x "$out" ] || [ "$here/libcni-client.go" -nt "$out" ]; then
  GOPATH=/usr/share/gocode GO111MODULE=off GOPROXY=off GOFLAGS=-mod=mod go build -o "$out" "$here/libcni-client.go"
fi
echo "$out"
