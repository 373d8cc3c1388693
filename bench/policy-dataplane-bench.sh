#!/usr/bin/env bash
# Pod->pod throughput across nodes with POLICIES NetworkPolicies active (issue 11), in throwaway namespaces: two
# 2-node weft labs (vxlan) enforcing the same policies, one with the nftables policy dataplane, one with the eBPF one,
# a third lab with policy off, and the bare-kernel twin (plain vxlan device, static FDB, no policy), interleaved, ROUNDS rounds, iperf3 -t SECONDS
# pinned to one core each side (-A) as in lab-bench.sh. Every policy selects every pod (podSelector: {}) for ingress:
# policy 0 allows the namespace's pods, the others each one /32 and one port, so both pods' ingress is decided by
# all of them. The policies go in with `weftctl apply --wait` (every agent enforces them before the first round).
# Usage: bench/policy-dataplane-bench.sh [seconds=5] [rounds=5] [policies=1000]      (as root, after ./build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-5}; R=${2:-5}; N=${3:-1000}
W=dist/weftctl
p="pd$$"; p=${p:0:8}
bare="${p}b"
pol=$(mktemp --suffix=.yaml)
source bench/bare-twin.sh
cleanup() {
  for l in "${p}n" "${p}e" "${p}o"; do $W lab down --name "$l" >/dev/null 2>&1 || true; done
  bare_down
  rm -f "$pol"
}
trap cleanup EXIT

python3 - "$N" >"$pol" <<'EOF'
import sys
for i in range(int(sys.argv[1])):
    if i == 0:
        ingress = "  - from:\n    - podSelector: {}\n"
    else:
        ingress = (f"  - from:\n    - ipBlock: {{cidr: 172.{16 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}/32}}\n"
                   f"    ports:\n    - {{protocol: TCP, port: {1000 + i % 1000}}}\n")
    print(f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bench-{i}, namespace: default}}\n"
          f"spec:\n  podSelector: {{}}\n  policyTypes: [Ingress]\n  ingress:\n{ingress}---")
EOF

podns() { $W lab status --name "$1" -o json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(" ".join(p["netns"]+" "+p["ip"] for p in d["pods"]))'; }
programmed() { grep 'policy programmed' "/var/lib/weft/labs/$1/node-1.log" | tail -1 | sed 's/.*policy programmed/policy programmed/'; }

echo "# weft policy-dataplane-bench $(date -u +%FT%TZ): $N policies, iperf3 -t $T, $R interleaved rounds"
for dp in nftables bpf; do
  l="${p}$([ "$dp" = nftables ] && echo n || echo e)"
  $W lab up --name "$l" --nodes 2 --pods-per-node 1 --backend vxlan --policy on --dataplane "$dp" >/dev/null
  $W --lab "$l" apply --wait --timeout 120s -f "$pol" | tail -1
  echo "$dp, node-1: $(programmed "$l")"
done
# Weft with policy off on the same path: what the network costs before any policy.
$W lab up --name "${p}o" --nodes 2 --pods-per-node 1 --backend vxlan --policy off >/dev/null
read -r oc _ os osip <<<"$(podns "${p}o")"
read -r nc _ ns nsip <<<"$(podns "${p}n")"
read -r ec _ es esip <<<"$(podns "${p}e")"
bare_up vxlan
declare -A sum
for r in $(seq "$R"); do
  if [ $((r % 2)) = 1 ]; then
    b=$(iperf "$bare-p1" "$bare-p2" 10.99.2.2); o=$(iperf "$oc" "$os" "$osip"); n=$(iperf "$nc" "$ns" "$nsip"); e=$(iperf "$ec" "$es" "$esip")
  else
    e=$(iperf "$ec" "$es" "$esip"); n=$(iperf "$nc" "$ns" "$nsip"); o=$(iperf "$oc" "$os" "$osip"); b=$(iperf "$bare-p1" "$bare-p2" 10.99.2.2)
  fi
  echo "round $r: bare $b, policy off $o, nftables $n, bpf $e Gbit/s"
  sum[b]+="$b "; sum[o]+="$o "; sum[n]+="$n "; sum[e]+="$e "
done
med() { python3 -c 'import sys,statistics; print("%.2f" % statistics.median(float(x) for x in sys.argv[1:]))' $1; }
ratio() { python3 -c "print('%.2fx' % ($1/$2))"; }
b=$(med "${sum[b]}"); o=$(med "${sum[o]}"); n=$(med "${sum[n]}"); e=$(med "${sum[e]}")
echo
echo "| pod->pod across nodes, vxlan, $N policies on both pods' ingress | Gbit/s (median of $R, iperf3 -t $T) | ratio to bare |"
echo "|---|---|---|"
echo "| bare kernel (no policy, no conntrack) | $b | 1.00x |"
echo "| weft, policy off (no policies, no enforcement) | $o | $(ratio "$o" "$b") |"
echo "| weft, nftables policy dataplane | $n | $(ratio "$n" "$b") |"
echo "| weft, bpf policy dataplane | $e | $(ratio "$e" "$b") |"
