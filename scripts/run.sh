#!/usr/bin/env bash
# Run one self-contained Parley node on the embedded store (http://localhost:8080).
# Extra arguments go to chat-node (see `chat-node --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
exec cargo run --release -p chat-node -- "$@"
