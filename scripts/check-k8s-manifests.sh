#!/usr/bin/env bash
# Validates the Kubernetes manifests of the operator with no cluster and no helm binary:
#   1. renders charts/parley-operator with Helm's own library (PyPI helm-python-sdk) under
#      several value sets, lints it (--strict), checks its CRD is crds/'s file, and checks
#      the example ChatClusters against the CRD's schema (scripts/check_k8s_manifests.py);
#   2. validates the rendered chart, crds/*.yaml and `chat-operator render -f` of the example
#      ChatClusters with `kubernetes-validate -k 1.33.0 --strict` (the real Kubernetes schemas);
#      the cert-manager Certificates among them, which it has no schema for, are validated
#      against the subset of cert-manager's schema checked in at scripts/schemas/.
# Needs python3 (with venv; installed through apt when missing and run as root), cargo, and
# network access to PyPI the first time. The venv lives in ./.venv (gitignored).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
KUBE_VERSION=1.33.0
VENV="${PARLEY_VENV:-$ROOT/.venv}"
# Pinned so that a new release of either cannot change what passes.
PY_PACKAGES=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0)

if ! command -v python3 >/dev/null; then
  echo "FAIL: python3 is required (Debian: apt-get install -y python3 python3-venv)" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "python3 venv support missing: installing python3-venv with apt-get" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$VENV"
    else
      echo "FAIL: python3 cannot create a venv; install python3-venv (apt-get install -y python3-venv)" >&2
      exit 1
    fi
  fi
fi
if ! "$VENV/bin/python" -c 'import helm_python, kubernetes_validate' 2>/dev/null; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
fi

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

echo "== render and lint the chart (helm-python-sdk $("$VENV/bin/python" -c 'import helm_python; print(helm_python.__version__)'))"
"$VENV/bin/python" scripts/check_k8s_manifests.py "$ROOT" "$OUT"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo build --quiet -p operator --bin chat-operator
for example in charts/parley-operator/examples/*.yaml; do
  echo "== chat-operator render -f $example"
  out="$OUT/render-$(basename "$example")"
  "$CARGO_TARGET_DIR/debug/chat-operator" render -f "$example" > "$out"
  echo "rendered $(grep -c '^kind:' "$out") children"
done

echo "== cert-manager Certificates in the rendered children (checked-in schema)"
"$VENV/bin/python" scripts/check_k8s_manifests.py --certificates "$ROOT" "$OUT"/render-*.yaml

echo "== kubernetes-validate -k $KUBE_VERSION --strict"
status=0
for f in crds/*.yaml "$OUT"/*.yaml; do
  result="$("$VENV/bin/kubernetes-validate" -k "$KUBE_VERSION" --strict "$f" 2>&1)" || status=1
  echo "$result"
  # kubernetes-validate only warns (exit 0) when it has no schema for a kind: that is
  # acceptable for ChatCluster (checked against its CRD above) and cert-manager's Certificate
  # (checked against scripts/schemas/ above), a failure for anything else.
  if echo "$result" | grep '^WARN' | grep -v 'kind ChatCluster with api version parley.dev/v1alpha1' \
      | grep -v 'kind Certificate with api version cert-manager.io/v1' | grep -q .; then
    echo "FAIL: $f has objects kubernetes-validate has no schema for" >&2
    status=1
  fi
done
if [ "$status" != 0 ]; then
  echo "FAIL: Kubernetes manifests do not validate" >&2
  exit 1
fi
echo "OK: chart, crds/ and rendered children validate against Kubernetes $KUBE_VERSION (strict)"
