#!/usr/bin/env bash
# Flow capture figures for BENCHMARKS.md (issue 5), inside throwaway lab namespaces:
#  1. Ingestion: a pod floods a pod that policy isolates (same node), so every packet is a new connection the
#     policy table logs twice (egress allowed, ingress dropped); the agent's own counters (`weftctl status -o json`)
#     give flows ingested per second and batches the kernel lost because the agent fell behind.
#  2. Cost on throughput: iperf3 pod->pod across nodes, policy on, with flow capture on and off (two labs,
#     interleaved rounds; the only difference is the agents' --flows).
# Usage: bench/flow-bench.sh [flood-seconds=3] [iperf-seconds=5] [rounds=3]      (as root, after ./build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
F=${1:-3}; T=${2:-5}; R=${3:-3}
W=dist/weftctl
p="fb$$"; p=${p:0:8}
cleanup() { for l in "${p}i" "${p}on" "${p}off"; do $W lab down --name "$l" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT
mkdir -p .tmp
gcc -O2 -o .tmp/flood bench/flood/flood.c

pod_ip() { $W lab status --name "$1" -o json | python3 -c "import json,sys; print([p['ip'] for p in json.load(sys.stdin)['pods'] if p['pod']=='$2'][0])"; }
node_stat() { $W --lab "$1" status -o json | python3 -c "import json,sys; n=[n for n in json.load(sys.stdin)['nodes'] if n['name']=='node-1'][0]; print(n['seenFlows'], n['lostFlows'])"; }
agent_pid() { $W lab status --name "$1" -o json | python3 -c "import json,sys; print([n['agentPid'] for n in json.load(sys.stdin)['nodes'] if n['name']=='node-1'][0])"; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

echo "== ingestion: ${F}s floods, 3 runs"
$W lab up --name "${p}i" --nodes 1 --pods-per-node 2 >/dev/null
cat > ".tmp/${p}-isolate.yaml" <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-pod-1, namespace: default}
spec:
  podSelector: {matchLabels: {app: pod-1}}
  policyTypes: [Ingress]
YAML
$W --lab "${p}i" apply -f ".tmp/${p}-isolate.yaml" >/dev/null
$W lab sync --name "${p}i" >/dev/null
target=$(pod_ip "${p}i" default/pod-1)
pid=$(agent_pid "${p}i")
hz=$(getconf CLK_TCK)
for run in 1 2 3; do
  read -r seen0 lost0 < <(node_stat "${p}i")
  cpu0=$(cpu_ticks "$pid")
  start=$(date +%s.%N)
  sent=$($W lab exec --name "${p}i" default/pod-2 -- "$PWD/.tmp/flood" "$target" 9 "$F")
  sleep 0.3 # the last NFLOG batch flushes within 50 ms
  end=$(date +%s.%N)
  read -r seen1 lost1 < <(node_stat "${p}i")
  cpu1=$(cpu_ticks "$pid")
  python3 - "$sent" "$seen0" "$seen1" "$lost0" "$lost1" "$F" "$cpu0" "$cpu1" "$hz" <<'PY'
import sys
sent, s0, s1, l0, l1, f, c0, c1, hz = map(float, sys.argv[1:])
flows = s1 - s0
print(f"packets sent {sent:.0f} ({sent/f/1e3:.0f}k/s), flows ingested {flows:.0f} = {flows/f/1e3:.0f}k flows/s over the flood, "
      f"expected {2*sent:.0f} (2 per packet), lost batches {l1-l0:.0f}, agent CPU {(c1-c0)/hz/f*100:.0f}% of one core")
PY
done
$W lab down --name "${p}i" >/dev/null

echo "== throughput, policy on: flows on vs off, ${T}s iperf3, ${R} rounds"
$W lab up --name "${p}on" --nodes 2 --pods-per-node 1 --flows on >/dev/null
$W lab up --name "${p}off" --nodes 2 --pods-per-node 1 --flows off >/dev/null
iperf() { # lab -> Gbit/s from pod-1 (node-1) to pod-2 (node-2)
  local ip; ip=$(pod_ip "$1" default/pod-2)
  $W lab exec --name "$1" default/pod-2 -- iperf3 -s -p 5299 -1 -D >/dev/null; sleep 0.3
  $W lab exec --name "$1" default/pod-1 -- iperf3 -c "$ip" -p 5299 -t "$T" -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}
on=(); off=()
for r in $(seq "$R"); do
  off+=("$(iperf "${p}off")"); on+=("$(iperf "${p}on")")
  echo "round $r: flows off ${off[-1]} Gbit/s, flows on ${on[-1]} Gbit/s"
done
python3 - "${on[*]}" "${off[*]}" <<'PY'
import statistics, sys
on = [float(x) for x in sys.argv[1].split()]; off = [float(x) for x in sys.argv[2].split()]
m_on, m_off = statistics.median(on), statistics.median(off)
print(f"median: flows on {m_on:.2f} Gbit/s, off {m_off:.2f} Gbit/s, ratio {m_on/m_off:.3f}x (cost {100*(1-m_on/m_off):.1f}%)")
PY
