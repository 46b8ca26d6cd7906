#!/usr/bin/env bash
# Check out COMMIT beside the working tree and build its chat-node in release, once; print the
# checkout's path. Used by scripts/bench-compare.sh and scripts/bench-compare-cluster.sh.
#
#   scripts/bench-base.sh COMMIT
#
# The checkout is a `git worktree` in $CARGO_TARGET_DIR/bench-base/src-COMMIT, built into
# $CARGO_TARGET_DIR/bench-base/target-COMMIT (~5 minutes the first time, then nothing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BASE="${1:?usage: scripts/bench-base.sh COMMIT}"
BASE_DIR="$CARGO_TARGET_DIR/bench-base"
BASE_SRC="$BASE_DIR/src-$BASE"
if [ ! -x "$BASE_DIR/target-$BASE/release/chat-node" ]; then
  if [ ! -d "$BASE_SRC" ]; then
    git worktree add --detach "$BASE_SRC" "$BASE" >/dev/null
  fi
  echo "== building chat-node at $BASE (release, once)" >&2
  (cd "$BASE_SRC" && CARGO_TARGET_DIR="$BASE_DIR/target-$BASE" cargo build --release --quiet -p chat-node)
fi
echo "$BASE_SRC"
