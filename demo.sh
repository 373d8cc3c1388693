#!/usr/bin/env bash
# Single-node demo: builds Weft, makes a throwaway node namespace, creates two pods with the real weft CNI plugin
# (exec'd inside the node namespace exactly as a container runtime calls it) and shows them talking.
# Everything lives in namespaces named weftdemo-$$-*, removed on exit. The root namespace is not touched.
set -euo pipefail
cd "$(dirname "$0")"
./build.sh
p="weftdemo-$$"
node="$p-node"; gw="$p-gw"
dir=$(mktemp -d /tmp/weft-demo.XXXXXX)
export WEFT_DATASTORE="sqlite://$dir/weft.db"
cleanup() { for n in "$p-pod-a" "$p-pod-b" "$node" "$gw"; do ip netns delete "$n" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

echo "== a node namespace with an underlay link (198.51.100.10/24) and two pod namespaces"
for n in "$node" "$gw" "$p-pod-a" "$p-pod-b"; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip -n "$node" link add eth0 type veth peer name eth0 netns "$gw"
ip -n "$node" addr add 198.51.100.10/24 dev eth0; ip -n "$node" link set eth0 up
ip -n "$gw" addr add 198.51.100.1/24 dev eth0; ip -n "$gw" link set eth0 up
ip -n "$node" route add default via 198.51.100.1

echo "== apply Calico IPPools (IPv4 and IPv6) with weftctl"
cat > "$dir/pools.yaml" <<'YAML'
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 10.244.0.0/16
  blockSize: 26
  natOutgoing: true
  nodeSelector: all()
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv6-ippool
spec:
  cidr: fd00:10:244::/48
  blockSize: 122
YAML
dist/weftctl apply -f "$dir/pools.yaml"
dist/weftctl get ippool -o wide

conf='{"cniVersion":"1.1.0","name":"weftnet","type":"weft","datastore":"'"$WEFT_DATASTORE"'","nodename":"demo-node","ipam":{"type":"weft-ipam"}}'
add() { # pod container-id
  echo "== CNI ADD $1 (ip netns exec $node dist/weft)"
  echo "$conf" | ip netns exec "$node" env CNI_COMMAND=ADD CNI_CONTAINERID="$2" CNI_NETNS="/var/run/netns/$p-$1" \
    CNI_IFNAME=eth0 CNI_PATH="$PWD/dist" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$1" dist/weft | tee "$dir/$1.json"
}
add pod-a ctr-a; add pod-b ctr-b
ipa=$(python3 -c 'import json,sys; print([i["address"].split("/")[0] for i in json.load(open(sys.argv[1]))["ips"] if ":" not in i["address"]][0])' "$dir/pod-a.json")
ipb=$(python3 -c 'import json,sys; print([i["address"].split("/")[0] for i in json.load(open(sys.argv[1]))["ips"] if ":" not in i["address"]][0])' "$dir/pod-b.json")
ipb6=$(python3 -c 'import json,sys; print([i["address"].split("/")[0] for i in json.load(open(sys.argv[1]))["ips"] if ":" in i["address"]][0])' "$dir/pod-b.json")

echo "== pod-a ($ipa) -> pod-b ($ipb), IPv4 and IPv6, and pod-a -> the node"
ip netns exec "$p-pod-a" ping -c 2 -W 2 "$ipb"
ip netns exec "$p-pod-a" ping -6 -c 2 -W 2 "$ipb6"
ip netns exec "$p-pod-a" ping -c 1 -W 2 198.51.100.10
echo "== TCP: pod-b serves, pod-a connects"
ip netns exec "$p-pod-b" timeout 5 nc -l -p 8080 & sleep 0.3
echo "hello from pod-a" | ip netns exec "$p-pod-a" nc -w 2 -N "$ipb" 8080; wait

echo "== IPAM as weftctl sees it"
dist/weftctl ipam show --show-blocks
dist/weftctl ipam show --ip "$ipa"
dist/weftctl ipam check

echo "== CNI DEL both pods"
for x in "pod-a ctr-a" "pod-b ctr-b"; do set -- $x
  echo "$conf" | ip netns exec "$node" env CNI_COMMAND=DEL CNI_CONTAINERID="$2" CNI_NETNS="/var/run/netns/$p-$1" CNI_IFNAME=eth0 CNI_PATH="$PWD/dist" dist/weft
done
dist/weftctl ipam show
echo "demo finished: namespaces are removed on exit"
