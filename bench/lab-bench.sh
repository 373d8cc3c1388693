#!/usr/bin/env bash
# Multi-node figures for BENCHMARKS.md (issue 3), all inside throwaway namespaces:
#  1. iperf3 pod->pod across nodes through a weft lab (vxlan, host-gw), each next to a bare-kernel twin wired by
#     hand in the same run (plain vxlan device with static FDB; plain routes), interleaved, REPEAT rounds. Weft runs
#     with policy off (the Flannel-style network the bare twin is comparable to; natOutgoing by the default BPF
#     masquerade, and again with --masquerade nftables, which puts conntrack and nat hooks in every node) and with
#     policy on (nftables enforcement: conntrack on every flow, which the bare twin does not pay). iperf3's client and
#     server are pinned to one core each (-A), the same for every arm, which halves the round-to-round spread here.
#  2. lab up time for 3 and 10 nodes (2 pods per node).
#  3. weft-agent RSS, idle, on a node with 100 pods.
# Usage: bench/lab-bench.sh [seconds-per-iperf=5] [rounds=3]      (as root, after ./build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-5}; R=${2:-3}
W=dist/weftctl
p="lb$$"; p=${p:0:8}
bare="${p}b"
cleanup() {
  for l in "${p}v" "${p}vn" "${p}vp" "${p}3" "${p}10" "${p}m"; do $W lab down --name "$l" >/dev/null 2>&1 || true; done
  for n in $(ip netns list | awk '{print $1}' | grep "^$bare-" || true); do ip netns delete "$n"; done
  pkill -f "iperf3 -s -p 52" 2>/dev/null || true
}
trap cleanup EXIT

source bench/bare-twin.sh # iperf, bare_up, bare_down: the bare-kernel twin, named by $bare

podns() { $W lab status --name "$1" -o json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(" ".join(p["netns"]+" "+p["ip"] for p in d["pods"]))'; }

declare -A sum
echo "# weft lab-bench $(date -u +%FT%TZ): iperf3 -t $T, $R interleaved rounds per path"
# One path at a time: only that path's three labs (policy off with BPF or nftables masquerade, policy on) and its bare twin exist while it is measured,
# so every figure in a comparison shares the same background; the order within a round alternates.
for path in vxlan host-gw; do
  $W lab up --name "${p}v" --nodes 2 --pods-per-node 1 --backend "$path" --policy off >/dev/null
  $W lab up --name "${p}vn" --nodes 2 --pods-per-node 1 --backend "$path" --policy off --masquerade nftables >/dev/null
  $W lab up --name "${p}vp" --nodes 2 --pods-per-node 1 --backend "$path" --policy on >/dev/null
  read -r vc _ vs vsip <<<"$(podns "${p}v")"
  read -r vnc _ vns vnsip <<<"$(podns "${p}vn")"
  read -r vpc _ vps vpsip <<<"$(podns "${p}vp")"
  bare_up "$([ "$path" = vxlan ] && echo vxlan || echo routes)"
  for r in $(seq "$R"); do
    if [ $((r % 2)) = 1 ]; then
      a=$(iperf "$vc" "$vs" "$vsip"); b=$(iperf "$bare-p1" "$bare-p2" 10.99.2.2); n=$(iperf "$vnc" "$vns" "$vnsip"); e=$(iperf "$vpc" "$vps" "$vpsip")
    else
      e=$(iperf "$vpc" "$vps" "$vpsip"); n=$(iperf "$vnc" "$vns" "$vnsip"); b=$(iperf "$bare-p1" "$bare-p2" 10.99.2.2); a=$(iperf "$vc" "$vs" "$vsip")
    fi
    echo "$path round $r: weft $a (nftables masquerade $n, policy on $e), bare $b Gbit/s"
    sum[w$path]+="$a "; sum[b$path]+="$b "; sum[p$path]+="$e "; sum[n$path]+="$n "
  done
  bare_down
  $W lab down --name "${p}v" >/dev/null; $W lab down --name "${p}vn" >/dev/null; $W lab down --name "${p}vp" >/dev/null
done
med() { python3 -c 'import sys,statistics; print("%.2f" % statistics.median(float(x) for x in sys.argv[1:]))' $1; }
ratio() { python3 -c "print('%.2fx' % ($1/$2))"; }
echo
echo "| path | weft, policy off, Gbit/s (median) | bare kernel Gbit/s (median) | ratio | policy off, --masquerade nftables | ratio to bare | weft, policy on (nftables + conntrack) | ratio to bare |"
echo "|---|---|---|---|---|---|---|---|"
for path in vxlan host-gw; do
  w=$(med "${sum[w$path]}"); b=$(med "${sum[b$path]}"); n=$(med "${sum[n$path]}"); e=$(med "${sum[p$path]}")
  label=$([ "$path" = vxlan ] && echo "vxlan" || echo "host-gw / plain routes")
  echo "| pod->pod across nodes, $label | $w | $b | $(ratio "$w" "$b") | $n | $(ratio "$n" "$b") | $e | $(ratio "$e" "$b") |"
done

echo
echo "| lab up (2 pods per node, vxlan, routed) | seconds |"
echo "|---|---|"
for n in 3 10; do
  s=$(date +%s.%N); $W lab up --name "${p}$n" --nodes "$n" --pods-per-node 2 >/dev/null; e=$(date +%s.%N)
  echo "| $n nodes | $(python3 -c "print('%.1f' % ($e-$s))") |"
  $W lab down --name "${p}$n" >/dev/null
done

topo=$(mktemp); for i in $(seq 100); do printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: p%d, namespace: default}\nspec: {nodeName: node-1}\n---\n' "$i"; done > "$topo"
$W lab up --name "${p}m" --nodes 2 --topology "$topo" >/dev/null; rm -f "$topo"
sleep 12 # two resync periods idle
pid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nodes"][0]["agentPid"])' "/var/lib/weft/labs/${p}m/lab.json")
echo
echo "| weft-agent, node with 100 pods, idle | VmRSS $(awk '/VmRSS/{printf "%.1f MiB", $2/1024}' /proc/$pid/status) | VmHWM $(awk '/VmHWM/{printf "%.1f MiB", $2/1024}' /proc/$pid/status) |"
