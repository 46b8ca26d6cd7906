#!/usr/bin/env bash
# Install what building and testing Parley needs, on Debian/Ubuntu, if it is missing:
#   protobuf-compiler  protoc, needed by etcd-client's build script
#   etcd-server        (--test, --cluster) a real etcd for the tests and the local cluster script
#   python3-venv       for the offline Kubernetes manifest checks and schemathesis
#   g++, curl          (--test) libFuzzer's C++ sources (the fuzz pass); the schema pass's set-up
#   nodejs, npm, chromium  for the web client's browser tests (Playwright drives Debian's Chromium)
#   fonts-noto-color-emoji so that reactions show as emoji in the browser tests' screenshots
# On other systems it says what to install and stops.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
if [ "${1:-}" = "--test" ] || [ "${1:-}" = "--cluster" ]; then
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
fi
if [ "${1:-}" = "--test" ]; then
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
  command -v g++ >/dev/null 2>&1 || need+=(g++)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  [ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need+=(fonts-noto-color-emoji)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
else
  cat >&2 <<MSG
Parley needs these, which this script can install only with apt-get: ${need[*]}
  macOS (Homebrew): brew install protobuf etcd python node chromium
  Fedora:           sudo dnf install protobuf-compiler etcd python3
  Arch:             sudo pacman -S protobuf etcd python
Then run the command again.
MSG
  exit 1
fi
