#!/usr/bin/env bash
# Kubernetes e2e of the operator: installs the chart into a real cluster (kind or k3d),
# applies a ChatCluster, waits for Ready, exchanges messages across pods, scales 3 -> 5 -> 2
# while clients stay connected, and checks nothing acked was lost.
#
# Runs only when KUBECONFIG (or the default kubeconfig) reaches a cluster. Otherwise it prints
# "NOT RUN" and exits 0 WITHOUT having tested anything (set E2E_K8S_REQUIRED=1 to make that a
# failure, e.g. in a CI job that has a cluster). It is not a cargo test and is never counted
# as passed when it did not run.
#
# Needs: kubectl, helm, and the two images loaded into the cluster:
#   PARLEY_OPERATOR_IMAGE (default registry.example.com/parley/chat-operator:0.1.0)
#   PARLEY_NODE_IMAGE     (default registry.example.com/parley/chat-node:0.1.0)
# The client pod pip-installs `websockets`, so the cluster needs egress to PyPI.
# See docs/operator.md, "Kubernetes e2e".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
not_run() {
  echo "=================================================================="
  echo "NOT RUN: no Kubernetes cluster reachable (KUBECONFIG) -- $1"
  echo "The Kubernetes e2e did not run; nothing was tested."
  echo "=================================================================="
  if [ "${E2E_K8S_REQUIRED:-0}" = 1 ]; then exit 1; fi
  exit 0
}
command -v kubectl >/dev/null || not_run "kubectl is not installed"
kubectl version --request-timeout=5s >/dev/null 2>&1 || not_run "kubectl cannot reach an API server"
command -v helm >/dev/null || { echo "FAIL: a cluster is reachable but helm is not installed" >&2; exit 1; }

OPERATOR_IMAGE="${PARLEY_OPERATOR_IMAGE:-registry.example.com/parley/chat-operator:0.1.0}"
NODE_IMAGE="${PARLEY_NODE_IMAGE:-registry.example.com/parley/chat-node:0.1.0}"
NS="parley-e2e-$RANDOM"
OP_NS="$NS-system"
TIMEOUT="${E2E_TIMEOUT:-600s}"

cleanup() {
  if [ "${E2E_KEEP:-0}" = 1 ]; then echo "E2E_KEEP=1: leaving namespaces $NS and $OP_NS"; return; fi
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  helm uninstall parley -n "$OP_NS" >/dev/null 2>&1 || true
  kubectl delete namespace "$OP_NS" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT
step() { echo; echo "== $*"; }

wait_ready_replicas() { # wait until the ChatCluster reports N ready nodes and Ready=True
  local n=$1 deadline=$((SECONDS + 600))
  until [ "$(kubectl -n "$NS" get chat e2e -o jsonpath='{.status.readyReplicas}/{.status.replicas}/{.status.members}')" = "$n/$n/$n" ] \
     && kubectl -n "$NS" wait chat/e2e --for=condition=Ready --timeout=5s >/dev/null 2>&1; do
    if [ $SECONDS -gt $deadline ]; then
      echo "FAIL: ChatCluster did not reach $n ready nodes in 600 s" >&2
      kubectl -n "$NS" describe chat e2e >&2; kubectl -n "$NS" get pods >&2; exit 1
    fi
    sleep 3
  done
  kubectl -n "$NS" get chat e2e
}

step "install the chart into $OP_NS (operator $OPERATOR_IMAGE)"
kubectl create namespace "$OP_NS" >/dev/null
helm install parley "$ROOT/charts/parley-operator" -n "$OP_NS" --wait --timeout "$TIMEOUT" \
  --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" --set image.pullPolicy=IfNotPresent

step "etcd and a ChatCluster of 3 nodes in $NS"
kubectl create namespace "$NS" >/dev/null
kubectl -n "$NS" apply -f "$ROOT/e2e/k8s/etcd.yaml"
kubectl -n "$NS" rollout status deployment/etcd --timeout="$TIMEOUT"
kubectl -n "$NS" apply -f - <<YAML
apiVersion: parley.dev/v1alpha1
kind: ChatCluster
metadata: {name: e2e}
spec:
  replicas: 3
  image: $NODE_IMAGE
  etcd: {endpoints: ["http://etcd.$NS.svc:2379"]}
  storage: {backend: etcd}
  drain: {timeoutSeconds: 60}
YAML
wait_ready_replicas 3

step "clients connected, messages across pods"
kubectl -n "$NS" create configmap e2e-client --from-file="$ROOT/e2e/k8s/chat_client.py"
kubectl -n "$NS" apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata: {name: e2e-client}
spec:
  restartPolicy: Never
  containers:
    - name: client
      image: python:3.12-slim
      command: ["sh", "-c", "pip install --quiet websockets==13.1 && python /e2e/chat_client.py"]
      env: [{name: PARLEY_URL, value: "http://e2e.$NS.svc:80"}]
      volumeMounts: [{name: client, mountPath: /e2e}]
  volumes: [{name: client, configMap: {name: e2e-client}}]
YAML
kubectl -n "$NS" wait pod/e2e-client --for=condition=Ready --timeout="$TIMEOUT"
sleep 20

step "scale 3 -> 5 with clients connected"
kubectl -n "$NS" scale chat/e2e --replicas=5
wait_ready_replicas 5
sleep 20

step "scale 5 -> 2 with clients connected (drains 3 nodes)"
kubectl -n "$NS" scale chat/e2e --replicas=2
wait_ready_replicas 2
kubectl -n "$NS" get events --field-selector involvedObject.name=e2e | tail -20 || true
sleep 20

step "stop the clients and check every acked message"
kubectl -n "$NS" exec e2e-client -- touch /tmp/stop
kubectl -n "$NS" wait pod/e2e-client --for=jsonpath='{.status.phase}'=Succeeded --timeout="$TIMEOUT" || true
kubectl -n "$NS" logs e2e-client | tail -20
phase="$(kubectl -n "$NS" get pod e2e-client -o jsonpath='{.status.phase}')"
if [ "$phase" != Succeeded ]; then
  echo "FAIL: the e2e client ended in phase $phase (see its log above)" >&2
  exit 1
fi
echo "PASS: Kubernetes e2e (install, Ready, messages across pods, scale 3 -> 5 -> 2, nothing lost)"
