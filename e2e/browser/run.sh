#!/usr/bin/env bash
# Browser tests of the web client: installs Debian's Chromium if needed, builds and starts a
# chat-node on a free loopback port with a fresh data dir, runs the Playwright tests against it,
# and always stops the node. Exits with the tests' status. Screenshots: e2e/browser/artifacts/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
# Reactions are emoji: without a colour emoji font the screenshots show empty boxes.
[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || missing+=(fonts-noto-color-emoji)
if [ ${#missing[@]} -gt 0 ]; then
  echo "run.sh: installing ${missing[*]} (apt-get)"
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

(cd "$here" && npm ci --no-audit --no-fund)

target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
bin="$target_dir/debug/chat-node"
# cargo is a no-op when the binary is up to date (and rebuilds it when the web assets changed).
(cd "$root" && cargo build -p chat-node)
[ -x "$bin" ] || { echo "run.sh: no binary at $bin after the build" >&2; exit 1; }

work="$(mktemp -d)"
node_pid=""
cleanup() {
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill "$node_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$node_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/data" "$here/artifacts"
"$bin" --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/node.log" 2>&1 &
node_pid=$!

url=""
for _ in $(seq 1 300); do  # up to 30 s
  url="$(grep -o 'listening on http://127\.0\.0\.1:[0-9]*' "$work/node.log" | head -n 1 | sed 's/^listening on //')" || true
  [ -n "$url" ] && break
  if ! kill -0 "$node_pid" 2>/dev/null; then
    echo "run.sh: chat-node exited before it was ready:" >&2; cat "$work/node.log" >&2; exit 1
  fi
  sleep 0.1
done
if [ -z "$url" ]; then echo "run.sh: chat-node did not log 'listening on' within 30 s:" >&2; cat "$work/node.log" >&2; exit 1; fi
echo "run.sh: chat-node at $url"

status=0
(cd "$here" && PARLEY_URL="$url" npm test) || status=$?
if [ "$status" -ne 0 ]; then
  cp "$work/node.log" "$here/artifacts/node.log" 2>/dev/null || true
  echo "run.sh: tests failed (status $status); node log and screenshots in e2e/browser/artifacts/" >&2
fi
exit "$status"
