#!/usr/bin/env bash
# Run every test of the project. Installs what the tests need (Debian/Ubuntu), builds, and
# runs the unit, integration and end-to-end suites, then the offline Kubernetes checks.
# Tests that need a service this machine lacks print "NOT RUN" and are never counted as passed.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --test

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo test (workspace)"
cargo test --workspace --locked 2>&1

echo "== fuzzing (libFuzzer, a bounded pass: scripts/fuzz.sh)"
./scripts/fuzz.sh 12

echo "== schema testing (schemathesis against docs/openapi.yaml on a real node)"
./scripts/schemathesis.sh 10

echo "== web client in a real browser (Playwright + Chromium)"
./e2e/browser/run.sh

if [ -x scripts/check-k8s-manifests.sh ]; then
  echo "== Kubernetes manifests (offline render + schema validation)"
  ./scripts/check-k8s-manifests.sh
fi
if [ -x e2e/k8s/run.sh ]; then
  echo "== Kubernetes cluster e2e"
  ./e2e/k8s/run.sh
fi
echo "== all tests passed"
