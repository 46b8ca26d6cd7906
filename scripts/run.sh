#!/usr/bin/env bash
# Run one self-contained Parley node on the embedded store (http://localhost:8080).
# Extra arguments go to chat-node (see `chat-node --help`).
#
# The first run compiles Parley and its dependencies in release mode: several minutes (about
# 5 to 10 on a 2-core machine, ~3 GB under target/), with cargo's own progress shown. Later
# runs only ask cargo whether anything changed (about a second) and start the built binary.
# PARLEY_PROFILE=dev builds a debug binary instead (about half the first-build time; fine for
# trying Parley out, slower under load).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust 1.85 or newer from https://rustup.rs, then run this again" >&2
  exit 1
fi
profile="${PARLEY_PROFILE:-release}"
case "$profile" in
  release) dir=release ;;
  dev) dir=debug ;;
  *) echo "PARLEY_PROFILE must be release or dev, not $profile" >&2; exit 2 ;;
esac
target="${CARGO_TARGET_DIR:-target}"
bin="$target/$dir/chat-node"
if [ ! -x "$bin" ]; then
  echo "== first start: building chat-node ($profile profile). This compiles a few hundred crates" >&2
  echo "   and takes several minutes (about 5 to 10 on 2 cores); later starts take a second." >&2
fi
# A no-op when nothing changed; cargo shows its progress otherwise.
cargo build --profile "$profile" -p chat-node
exec "$bin" "$@"
