#!/usr/bin/env bash
# The main job: installs what is missing, builds, brings a real 3-node Weft lab up in network namespaces
# (underlay bridge, a weft-agent per node, pods made by the weft CNI plugin), applies an example, and prints the
# reachability matrix from real packets. The lab is removed on exit unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")"
./build.sh
name=${LAB:-demo$$}
name=${name:0:12}
cleanup() { [ "${KEEP:-0}" = 1 ] && { echo "lab kept: dist/weftctl lab down --name $name"; return; }; dist/weftctl lab down --name "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
dist/weftctl lab up --name "$name" --nodes 3 --pods-per-node 2 --backend "${BACKEND:-vxlan}" --mode "${MODE:-routed}"
echo; echo "== apply an example (examples/extra-pool.yaml) to the lab's datastore"
dist/weftctl --lab "$name" apply -f examples/extra-pool.yaml
dist/weftctl --lab "$name" get ippool -o wide
dist/weftctl --lab "$name" get nodes
echo; echo "== reachability matrix, TCP/80 (every pod to every pod, real connections)"
dist/weftctl lab matrix --name "$name" --port 80
echo; echo "== UDP/80"
dist/weftctl lab matrix --name "$name" --port 80 --protocol UDP
echo; echo "== network policy: apply examples/policies/demo-web-db.yaml (a Kubernetes NetworkPolicy and a Calico GlobalNetworkPolicy)"
dist/weftctl --lab "$name" apply -f examples/policies/demo-web-db.yaml
dist/weftctl lab sync --name "$name"
dist/weftctl --lab "$name" get networkpolicy
echo; echo "== TCP/80 with the policies enforced by every node's nftables (real connections)"
dist/weftctl lab matrix --name "$name" --port 80
echo; echo "== why is pod-3 -> pod-1 blocked?"
dist/weftctl --lab "$name" policy trace --from default/pod-3 --to default/pod-1 --port 80
echo; echo "== the dropped connections, as every node's agent saw them (weftctl observe, hubble's flags)"
dist/weftctl --lab "$name" observe --verdict DROPPED --last 10
echo; echo "== the cluster at a glance"
dist/weftctl --lab "$name" status
echo; echo "== IPAM"
dist/weftctl --lab "$name" ipam show --show-blocks
