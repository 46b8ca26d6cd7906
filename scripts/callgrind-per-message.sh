#!/usr/bin/env bash
# Instructions (valgrind --tool=callgrind) a chat node spends per one-on-one message, in the
# steady state: counted only over a window while parley-bench sends at a fixed low rate, and
# minus the same window with the same sockets open and nothing sent. Instruction counts are
# repeatable whatever else the machine runs, so builds compare across runs.
#
#   scripts/callgrind-per-message.sh [--base COMMIT] [RATE] [SECS]
#     RATE messages/s (default 30), SECS the window (default 30)
#
# With --base it measures the older build (see scripts/bench-compare.sh, which builds it)
# and then this tree's, one after the other.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BASE=""
if [ "${1:-}" = "--base" ]; then
  BASE="$2"
  shift 2
fi
RATE="${1:-30}"
SECS="${2:-30}"
PORT="${PARLEY_BENCH_PORT:-8090}"
command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install -y valgrind" >&2; exit 2; }
cargo build --release --quiet -p chat-node -p parley-bench

measure() {
  local name="$1" bin="$2"
  local data="$CARGO_TARGET_DIR/callgrind-$name-data" out="$CARGO_TARGET_DIR/callgrind-$name.out"
  rm -rf "$data" "$data.users.json" "$out"*
  mkdir -p "$data"
  local flags=()
  if "$bin" --help | grep -q -- --max-sends-per-second; then
    flags+=(--max-sends-per-second 0 --max-logins-per-address 0 --max-failed-logins 0)
  fi
  # Users first, on a node without valgrind (argon2 under valgrind takes minutes).
  RUST_LOG=warn "$bin" --listen "127.0.0.1:$PORT" --data-dir "$data" "${flags[@]}" >"$data.log" 2>&1 &
  local pid=$!
  until curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do sleep 0.1; done
  "$CARGO_TARGET_DIR/release/parley-bench" --url "http://127.0.0.1:$PORT" --users-file "$data.users.json" \
    idle --connections 40 --hold-secs 1 >/dev/null 2>&1
  kill -TERM $pid; wait $pid || true
  # The node under callgrind, counting nothing until asked.
  RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$bin" --listen "127.0.0.1:$PORT" --data-dir "$data" "${flags[@]}" >"$data.vg.log" 2>&1 &
  pid=$!
  until curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do sleep 0.5; done
  local sent
  sent() { curl -fsS "http://127.0.0.1:$PORT/metrics" | awk '/^parley_messages_sent_total /{print $2}'; }
  # Idle: 40 sockets open, nothing sent.
  "$CARGO_TARGET_DIR/release/parley-bench" --url "http://127.0.0.1:$PORT" --users-file "$data.users.json" \
    idle --connections 40 --hold-secs $((SECS + 20)) >/dev/null 2>&1 &
  local tool=$!
  sleep 10
  callgrind_control -i on $pid >/dev/null
  sleep "$SECS"
  callgrind_control -d "idle" $pid >/dev/null
  callgrind_control -i off $pid >/dev/null
  wait $tool || true
  # Load: 20 pairs at RATE messages/s.
  "$CARGO_TARGET_DIR/release/parley-bench" --url "http://127.0.0.1:$PORT" --users-file "$data.users.json" \
    dm --pairs 20 --rates "$RATE" --step-secs $((SECS + 25)) --half-step false --p99-limit-ms 100000 >/dev/null 2>&1 &
  tool=$!
  sleep 12
  local before after
  before=$(sent)
  callgrind_control -z $pid >/dev/null
  callgrind_control -i on $pid >/dev/null
  sleep "$SECS"
  callgrind_control -d "load" $pid >/dev/null
  callgrind_control -i off $pid >/dev/null
  after=$(sent)
  wait $tool || true
  kill -TERM $pid; wait $pid || true
  local idle load
  idle=$(grep -h '^summary:' "$out".*1 2>/dev/null | awk '{s+=$2} END {print s}')
  load=$(grep -h '^summary:' "$out".*2 2>/dev/null | awk '{s+=$2} END {print s}')
  local n=$((${after%.*} - ${before%.*}))
  echo "$name: idle window $idle Ir, load window $load Ir, $n messages: $(( (load - idle) / (n > 0 ? n : 1) )) instructions per message"
}

if [ -n "$BASE" ]; then
  BASE_BIN="$CARGO_TARGET_DIR/bench-base/target-$BASE/release/chat-node"
  [ -x "$BASE_BIN" ] || { echo "build the base first: scripts/bench-compare.sh --base $BASE idle --connections 10" >&2; exit 2; }
  measure "base-$BASE" "$BASE_BIN"
fi
measure "new-$(git describe --always --dirty)" "$CARGO_TARGET_DIR/release/chat-node"
