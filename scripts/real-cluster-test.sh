#!/usr/bin/env bash
# Opt-in, never run by CI: installs Weft into a real cluster (kind, or any cluster your kubeconfig reaches whose
# nodes have no other CNI) and checks what a user would: the DaemonSet rolls out, two pods on two nodes reach each
# other, a NetworkPolicy blocks one and its deletion lets it through again, Weft's IPAM records are in the API.
# Usage: scripts/real-cluster-test.sh --kind CLUSTER             (loads the image into kind's nodes)
#        scripts/real-cluster-test.sh --image REGISTRY/weft:TAG  (pushes the image there; nodes must pull from it)
#        add --uninstall to `kubectl delete -f` Weft at the end.
# Needs: kubectl (KUBECONFIG or ~/.kube/config), podman, and kind for --kind. The test pods run agnhost from
# registry.k8s.io (the Kubernetes e2e image), so the nodes need to pull from it.
set -euo pipefail
cd "$(dirname "$0")/.."
kind_cluster="" image="weft:dev" uninstall=0
while [ $# -gt 0 ]; do
  case "$1" in
    --kind) kind_cluster="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -n "$kind_cluster" ] || [ "$image" != "weft:dev" ] || { echo "give --kind CLUSTER or --image REGISTRY/weft:TAG" >&2; exit 2; }
step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# kind's containerd names an image loaded from an archive as written in it: name it as the kubelet will look it up.
[ -n "$kind_cluster" ] && [ "$image" = "weft:dev" ] && image="docker.io/library/weft:dev"

step "build and image"
./build.sh >/dev/null
deploy/build-image.sh "$image"
if [ -n "$kind_cluster" ]; then
  kind load image-archive dist/weft-image.tar --name "$kind_cluster"
else
  podman load -q -i dist/weft-image.tar >/dev/null
  podman push "$image"
fi

step "kubectl apply -f deploy/weft.yaml (image $image)"
manifest="$(mktemp --suffix .yaml)"
trap 'rm -f "$manifest"' EXIT
sed "s#image: weft:dev#image: $image#" deploy/weft.yaml > "$manifest"
kubectl apply -f "$manifest"
kubectl -n weft-system rollout status ds/weft-node --timeout=300s
kubectl get ippools.projectcalico.org

step "two pods on two nodes"
kubectl create namespace weft-e2e --dry-run=client -o yaml | kubectl apply -f -
for name in a b; do
  kubectl apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $name, namespace: weft-e2e, labels: {app: weft-e2e, role: $name}}
spec:
  affinity:
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
      - {labelSelector: {matchLabels: {app: weft-e2e}}, topologyKey: kubernetes.io/hostname}
  containers:
  - name: agnhost
    image: registry.k8s.io/e2e-test-images/agnhost:2.47
    args: [netexec, --http-port=8080]
EOF
done
kubectl -n weft-e2e wait --for=condition=Ready pod/a pod/b --timeout=180s
kubectl -n weft-e2e get pods -o wide
ip_b="$(kubectl -n weft-e2e get pod b -o jsonpath='{.status.podIP}')"
connect() { kubectl -n weft-e2e exec a -- /agnhost connect "$ip_b:8080" --timeout=3s; }
connect || fail "a cannot reach b at $ip_b"
echo "a reaches b at $ip_b"

step "a NetworkPolicy denies ingress to b, then is deleted"
kubectl apply -f - <<'EOF'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-to-b, namespace: weft-e2e}
spec:
  podSelector: {matchLabels: {role: b}}
  policyTypes: [Ingress]
EOF
blocked=0
for _ in $(seq 1 20); do if ! connect 2>/dev/null; then blocked=1; break; fi; sleep 0.5; done
[ "$blocked" = 1 ] || fail "the policy did not block a -> b within 10 s"
echo "blocked"
kubectl -n weft-e2e delete networkpolicy deny-to-b
allowed=0
for _ in $(seq 1 20); do if connect 2>/dev/null; then allowed=1; break; fi; sleep 0.5; done
[ "$allowed" = 1 ] || fail "a -> b stayed blocked 10 s after the policy was deleted"
echo "allowed again"

step "Weft's records in the API"
kubectl get ipamblocks.weft.dev,blockaffinities.weft.dev,weftnodes.weft.dev
kubectl -n weft-system logs ds/weft-node --tail=20 | grep -m3 "policy programmed" || fail "no agent log says policy was programmed"

step "clean up"
kubectl delete namespace weft-e2e --wait=true
if [ "$uninstall" = 1 ]; then kubectl delete -f "$manifest"; fi
echo "PASS"
