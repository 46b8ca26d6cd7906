#!/usr/bin/env bash
# Run one parley-bench scenario against an older build of chat-node and against this tree's,
# one after the other on this machine, so that the two figures compare (machines differ by
# 2x in CPU speed: only figures taken side by side in one run mean anything).
#
#   scripts/bench-compare.sh [--base COMMIT] [--fresh] SCENARIO [SCENARIO FLAGS...]
#   e.g. scripts/bench-compare.sh dm --pairs 200 --rates 2000,4000,8000,16000,24000
#        scripts/bench-compare.sh --base 12012e6 idle --connections 10000
#        scripts/bench-compare.sh --fresh dm --pairs 200   # both sides on empty data dirs
#
# COMMIT defaults to 12012e6, the wave-1 node (the first version of the write path). It is
# checked out with `git worktree` into target/bench-base/src and built in release into
# target/bench-base/target (once per commit; ~5 minutes the first time). Both nodes are
# driven by this tree's parley-bench, each on its own data dir kept between runs (so the
# benchmark users are created once per build; one per base commit, since builds may not read
# each other's data), and every JSON line goes to
# target/bench-results.jsonl labelled "base <commit>" or "new <describe>". --fresh empties
# both data dirs first: a data dir grown by earlier runs lowers the one-on-one figures of
# every build (fjall's compactions; docs/benchmarks.md), so compare on equal footing.
# Environment: PARLEY_BENCH_BASE_FLAGS / PARLEY_BENCH_NEW_FLAGS add node flags to one side;
# PARLEY_BENCH_ONLY=base|new runs one side; PARLEY_BENCH_CALLGRIND_DIR=DIR runs both nodes
# under callgrind and writes DIR/base.out and DIR/new.out.
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
FRESH=()
if [ "${1:-}" = "--fresh" ]; then
  FRESH=(--fresh)
  shift
fi
if [ $# -lt 1 ]; then
  echo "usage: scripts/bench-compare.sh [--base COMMIT] [--fresh] idle|dm|group|storm|catchup [flags]" >&2
  exit 2
fi

./scripts/bench-base.sh "$BASE" >/dev/null
BASE_BIN="$CARGO_TARGET_DIR/bench-base/target-$BASE/release/chat-node"
echo "== building this tree (release)" >&2
cargo build --release --quiet -p chat-node -p parley-bench

NEW_NAME="new $(git describe --always --dirty)"
run() {
  local side="$1" bin="$2" flags="$3" label="$4"
  shift 4
  echo "== $label: $*" >&2
  local callgrind="" data="$side"
  [ "$side" = base ] && data="base-$BASE"
  if [ -n "${PARLEY_BENCH_CALLGRIND_DIR:-}" ]; then
    mkdir -p "$PARLEY_BENCH_CALLGRIND_DIR"
    callgrind="$PARLEY_BENCH_CALLGRIND_DIR/$side.out"
  fi
  PARLEY_BENCH_NODE_BIN="$bin" PARLEY_BENCH_NODE_FLAGS="$flags" PARLEY_BENCH_LABEL="$label" \
    PARLEY_BENCH_DATA="$CARGO_TARGET_DIR/bench-compare-$data-data" \
    PARLEY_BENCH_CALLGRIND="$callgrind" \
    ./scripts/bench.sh ${FRESH[@]+"${FRESH[@]}"} "$@"
}
if [ "${PARLEY_BENCH_ONLY:-base}" != "new" ]; then
  run base "$BASE_BIN" "${PARLEY_BENCH_BASE_FLAGS:-}" "base $BASE" "$@"
fi
if [ "${PARLEY_BENCH_ONLY:-new}" != "base" ]; then
  NEW_FLAGS="${PARLEY_BENCH_NEW_FLAGS:-}"
  # The per-user send limit would cap a benchmark's senders: the new node runs without it.
  if "$CARGO_TARGET_DIR/release/chat-node" --help | grep -q -- --max-sends-per-second; then
    NEW_FLAGS="--max-sends-per-second 0 $NEW_FLAGS"
  fi
  run new "$CARGO_TARGET_DIR/release/chat-node" "$NEW_FLAGS" "$NEW_NAME" "$@"
fi
