#!/usr/bin/env bash
# Run one parley-bench scenario against a single release chat-node started here.
#
#   scripts/bench.sh [--fresh] SCENARIO [SCENARIO FLAGS...]
#   e.g. scripts/bench.sh dm --pairs 200 --step-secs 5
#        scripts/bench.sh idle --connections 10000
#
# Builds chat-node and parley-bench in release, starts the node on 127.0.0.1:$PARLEY_BENCH_PORT
# (default 8090) with its data in $PARLEY_BENCH_DATA (default target/bench-data, kept between
# runs so that the cached benchmark users stay valid; --fresh wipes it), waits for /readyz,
# runs the scenario, stops the node with SIGTERM. The JSON line is appended to
# target/bench-results.jsonl. With PARLEY_BENCH_PERF=FILE the node runs under
# `perf record` (flags from PARLEY_BENCH_PERF_ARGS, default "-F 499 -g") and the profile is
# written to FILE; with PARLEY_BENCH_CALLGRIND=FILE under `valgrind --tool=callgrind`
# (instruction counts, repeatable whatever else the machine does).
# PARLEY_BENCH_NODE_BIN runs another chat-node binary (scripts/bench-compare.sh uses it for
# the older build), PARLEY_BENCH_NODE_FLAGS adds flags to the node's command line, and
# PARLEY_BENCH_LABEL is stored with the results. `--then` separates scenarios run one after
# the other against the same node.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
PORT="${PARLEY_BENCH_PORT:-8090}"
DATA="${PARLEY_BENCH_DATA:-$CARGO_TARGET_DIR/bench-data}"
USERS="$DATA.users.json"

if [ "${1:-}" = "--fresh" ]; then
  shift
  rm -rf "$DATA" "$USERS"
fi
if [ $# -lt 1 ]; then
  echo "usage: scripts/bench.sh [--fresh] idle|dm|group|storm|catchup [flags]" >&2
  exit 2
fi

./scripts/install-deps.sh >/dev/null
if [ -z "${PARLEY_BENCH_NODE_BIN:-}" ]; then
  cargo build --release --quiet -p chat-node -p parley-bench
else
  cargo build --release --quiet -p parley-bench
fi
mkdir -p "$DATA"

# Both ends may hold ~10,000+ sockets: take the hard open-file limit.
ulimit -n "$(ulimit -Hn)"

NODE_BIN="${PARLEY_BENCH_NODE_BIN:-$CARGO_TARGET_DIR/release/chat-node}"
# shellcheck disable=SC2206 # the extra flags are meant to split
NODE=("$NODE_BIN" --listen "127.0.0.1:$PORT" --data-dir "$DATA" ${PARLEY_BENCH_NODE_FLAGS:-})
# A benchmark is one client machine sending as fast as it can: the limits against abuse that
# would throttle it (sends per user, logins and sign-ups per address) are turned off
# explicitly, so the figures measure the node, not the limiter (docs/benchmarks.md). As
# variables (= --max-sends-per-second 0 --max-logins-per-address 0), which a build from
# before the limits (PARLEY_BENCH_NODE_BIN, scripts/bench-compare.sh) ignores.
export PARLEY_MAX_SENDS_PER_SECOND=0 PARLEY_MAX_LOGINS_PER_ADDRESS=0
LOG="$DATA.node.log"
if [ -n "${PARLEY_BENCH_PERF:-}" ]; then
  # shellcheck disable=SC2086 # the flags are meant to split
  RUST_LOG="${RUST_LOG:-warn}" perf record ${PARLEY_BENCH_PERF_ARGS:--F 499 -g} -o "$PARLEY_BENCH_PERF" \
    -- "${NODE[@]}" >"$LOG" 2>&1 &
elif [ -n "${PARLEY_BENCH_CALLGRIND:-}" ]; then
  RUST_LOG="${RUST_LOG:-warn}" valgrind --tool=callgrind --callgrind-out-file="$PARLEY_BENCH_CALLGRIND" \
    "${NODE[@]}" >"$LOG" 2>&1 &
else
  RUST_LOG="${RUST_LOG:-warn}" "${NODE[@]}" >"$LOG" 2>&1 &
fi
LAUNCHED=$!
stop_node() {
  # perf passes SIGINT on to the node and then writes its profile.
  if [ -n "${PARLEY_BENCH_PERF:-}" ]; then kill -INT "$LAUNCHED" 2>/dev/null || true
  else kill -TERM "$LAUNCHED" 2>/dev/null || true; fi
  # under valgrind the node takes a while to write its profile and exit
  wait "$LAUNCHED" 2>/dev/null || true
}
trap stop_node EXIT

for _ in $(seq 1 1200); do
  if curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$LAUNCHED" 2>/dev/null; then
    echo "chat-node exited before it was ready; its log ($LOG):" >&2
    tail -20 "$LOG" >&2
    exit 1
  fi
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null || { echo "chat-node not ready within 120 s" >&2; exit 1; }

# Several scenarios against one node run: `SCENARIO FLAGS... --then SCENARIO FLAGS...` (e.g.
# overload, then the load dropped at once: does the node recover without a restart?).
bench() {
  "$CARGO_TARGET_DIR/release/parley-bench" --url "http://127.0.0.1:$PORT" --users-file "$USERS" \
    --json-out "$CARGO_TARGET_DIR/bench-results.jsonl" --label "${PARLEY_BENCH_LABEL:-}" "$@"
}
each_scenario bench "$@"
