#!/usr/bin/env bash
# scripts/bench-compare.sh for a cluster: run parley-bench scenarios against three nodes on
# one etcd (`--store etcd`) of an older build, then of this tree, one after the other on this
# machine, so that the two figures compare.
#
#   scripts/bench-compare-cluster.sh [--base COMMIT] SCENARIO [FLAGS...] [--then SCENARIO FLAGS...]
#   e.g. scripts/bench-compare-cluster.sh dm --pairs 200 --rates 200,400,1000,2000 --step-secs 5 \
#          --then group --groups 4 --rates 10,20,40,80,160 --step-secs 5
#
# Each side runs its own build's scripts/cluster.sh, started fresh (a new etcd and new data
# dirs, so the benchmark users are created again): the wave-1 one (12012e6, the default base)
# runs etcd and the links in plain text, this tree's with TLS and client certificates
# everywhere, as in production. The scenarios get the three URLs; the cluster is stopped
# after them. JSON lines go to target/bench-results.jsonl labelled "base <commit>, 3 nodes on
# etcd" or "new <describe>, 3 nodes on etcd". PARLEY_BENCH_ONLY=base|new runs one side.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BASE="$BENCH_WAVE1"
if [ "${1:-}" = "--base" ]; then
  BASE="$2"
  shift 2
fi
if [ $# -lt 1 ]; then
  echo "usage: scripts/bench-compare-cluster.sh [--base COMMIT] dm|group|storm [flags] [--then ...]" >&2
  exit 2
fi
./scripts/install-deps.sh --cluster >/dev/null

BASE_SRC="$(./scripts/bench-base.sh "$BASE")"
# The base's cluster.sh runs ./target/release/chat-node of its own tree: point its target
# dir at the base build (so its `cargo build` finds everything built). Each cluster.sh runs
# with CARGO_TARGET_DIR unset, so that it builds into the ./target it runs from.
[ -e "$BASE_SRC/target" ] || ln -s "$CARGO_TARGET_DIR/bench-base/target-$BASE" "$BASE_SRC/target"
echo "== building this tree (release)" >&2
cargo build --release --quiet -p parley-bench
# What this tree's cluster.sh builds, built here first so that its own build is a no-op and
# the wait for its nodes below does not include a compile.
(unset CARGO_TARGET_DIR && cargo build --release --quiet -p chat-node -p parley-testkit --bin chat-node --bin parley-pki)

PORT_BASE="${PARLEY_BASE_PORT:-8080}"
URLS="http://127.0.0.1:$((PORT_BASE + 1)),http://127.0.0.1:$((PORT_BASE + 2)),http://127.0.0.1:$((PORT_BASE + 3))"
CLUSTER=""
stop_cluster() {
  if [ -n "$CLUSTER" ]; then
    # cluster.sh stops its etcd and nodes on TERM.
    kill -TERM "$CLUSTER" 2>/dev/null || true
    wait "$CLUSTER" 2>/dev/null || true
    CLUSTER=""
  fi
}
trap stop_cluster EXIT

run() {
  local side="$1" src="$2" label="$3"
  shift 3
  echo "== $label: $*" >&2
  local log="$CARGO_TARGET_DIR/bench-cluster-$side.log" users="$CARGO_TARGET_DIR/bench-cluster-$side.users.json"
  rm -f "$users"
  (cd "$src" && exec env -u CARGO_TARGET_DIR PARLEY_NODES=3 PARLEY_BASE_PORT="$PORT_BASE" RUST_LOG="${RUST_LOG:-warn}" \
    PARLEY_MAX_SENDS_PER_SECOND=0 PARLEY_MAX_LOGINS_PER_ADDRESS=0 ./scripts/cluster.sh) >"$log" 2>&1 &
  CLUSTER=$!
  local i
  for i in 1 2 3; do
    local ready=""
    for _ in $(seq 1 1200); do
      if curl -fsS "http://127.0.0.1:$((PORT_BASE + i))/readyz" >/dev/null 2>&1; then ready=1; break; fi
      kill -0 "$CLUSTER" 2>/dev/null || break
      sleep 0.1
    done
    if [ -z "$ready" ]; then
      echo "node $i of the $label cluster not ready within 120 s; its log ($log):" >&2
      tail -20 "$log" >&2
      exit 1
    fi
  done
  # Let every node see the full membership before users are assigned.
  sleep 3
  # `bench` reads `users` and `label` of this call.
  bench() {
    "$CARGO_TARGET_DIR/release/parley-bench" --url "$URLS" --users-file "$users" \
      --json-out "$CARGO_TARGET_DIR/bench-results.jsonl" --label "$label, 3 nodes on etcd" "$@"
  }
  each_scenario bench "$@"
  stop_cluster
}

ulimit -n "$(ulimit -Hn)"
if [ "${PARLEY_BENCH_ONLY:-base}" != "new" ]; then
  run base "$BASE_SRC" "base $BASE" "$@"
fi
if [ "${PARLEY_BENCH_ONLY:-new}" != "base" ]; then
  run new "$ROOT" "new $(git describe --always --dirty)" "$@"
fi
