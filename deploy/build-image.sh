#!/usr/bin/env bash
# Builds Weft's node image offline: FROM scratch, the NativeAOT binaries from dist/ (run ./build.sh first) under
# /opt/weft/bin, and exactly the shared libraries they load (linked, and opened at run time: libnftables, libbpf,
# sqlite, OpenSSL for the API server's TLS) with their own dependencies, copied from this machine's Debian packages.
# Writes dist/weft-image.tar (docker-archive). Then, for a cluster: load or push it where your nodes pull from, e.g.
#   podman load -i dist/weft-image.tar && podman push weft:dev registry.example.com/weft:dev
# and set both `image:` fields of deploy/weft.yaml to that name (the manifest says weft:dev).
# Usage: deploy/build-image.sh [tag=weft:dev]    (root; installs podman when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-weft:dev}"
for b in weft weft-etcd weft-agent; do
  [ -x "dist/$b" ] || { echo "dist/$b is missing: run ./build.sh first" >&2; exit 1; }
done
if ! command -v podman >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends podman >/dev/null
fi

work="$(mktemp -d /tmp/weft-image.XXXXXX)"
trap 'podman --root "$work/storage" --runroot "$work/run" --storage-driver vfs rmi -af >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs/opt/weft/bin" "$rootfs/tmp" "$rootfs/var/run" "$rootfs/var/lib/weft" "$rootfs/etc"
chmod 1777 "$rootfs/tmp"
cp dist/weft dist/weft-etcd dist/weft-agent "$rootfs/opt/weft/bin/"

# A library by path, with the symlink names it is known by, into the rootfs.
copy_lib() {
  local path="$1" real
  real="$(readlink -f "$path")"
  mkdir -p "$rootfs$(dirname "$real")" "$rootfs$(dirname "$path")"
  cp -n "$real" "$rootfs$real"
  [ "$path" = "$real" ] || ln -sf "$real" "$rootfs$path"
}
# What the binaries link, and what they open at run time (LibraryImport names) with everything those link.
declare -A seen=()
add_with_deps() {
  local f="$1" dep
  [ -n "${seen[$f]:-}" ] && return
  seen[$f]=1
  copy_lib "$f"
  for dep in $(ldd "$f" 2>/dev/null | awk '/=> \//{print $3} /^\t\/lib/{print $1}'); do add_with_deps "$dep"; done
}
for b in weft weft-etcd weft-agent; do
  for dep in $(ldd "dist/$b" | awk '/=> \//{print $3} /^\t\/lib/{print $1}'); do add_with_deps "$dep"; done
done
for name in libnftables.so.1 libbpf.so.1 libsqlite3.so.0 libssl.so.3 libcrypto.so.3 libz.so.1; do
  path="$(ldconfig -p | awk -v n="$name" '$1 == n && /x86-64/ {print $NF; exit}')"
  [ -n "$path" ] || { echo "$name is not installed here (scripts/install-deps.sh installs what Weft needs)" >&2; exit 1; }
  add_with_deps "$path"
done
# Name resolution and the nftables/iproute2 tables libnftables reads.
cp /etc/nsswitch.conf "$rootfs/etc/" 2>/dev/null || true
[ -d /etc/iproute2 ] && cp -r /etc/iproute2 "$rootfs/etc/"
echo "root:x:0:0:root:/:/opt/weft/bin/weft-agent" > "$rootfs/etc/passwd"

cat > "$work/Containerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
ENV PATH=/opt/weft/bin
CMD ["/opt/weft/bin/weft-agent", "--help"]
EOF
podman=(podman --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
"${podman[@]}" build --quiet -t "$tag" -f "$work/Containerfile" "$work" >/dev/null
rm -f dist/weft-image.tar
"${podman[@]}" save --quiet --format docker-archive -o dist/weft-image.tar "$tag"
echo "built $tag: dist/weft-image.tar ($(du -m dist/weft-image.tar | cut -f1) MB; $(find "$rootfs" -name '*.so*' | wc -l) shared library files)"
