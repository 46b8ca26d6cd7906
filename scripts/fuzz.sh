#!/usr/bin/env bash
# Fuzz the node's parsers with libFuzzer (the `libfuzzer-sys` crate that `cargo fuzz` uses),
# on the machine's stable toolchain: the targets in fuzz/ are built with the same
# coverage instrumentation `cargo fuzz` passes (SanitizerCoverage through -Cpasses and
# -Cllvm-args, which stable rustc accepts), without AddressSanitizer (that needs
# -Zsanitizer, i.e. nightly; Rust's own bounds checks, plus debug assertions and overflow
# checks in this build, catch what matters in safe code).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Default: 12 s per target, all five targets (frames, http_bodies, tokens, records, ws_bytes): the
# bounded pass scripts/test.sh runs. For a long run (operators, before a release), give
# more seconds, e.g. `scripts/fuzz.sh 3600 frames`. Each target starts from
# fuzz/corpus/<target>/ (checked in) and adds what it finds to target/fuzz-corpus/<target>
# (not checked in); a crash is written to fuzz/artifacts/<target>/ and fails the run. Each
# input is capped at 64 KiB (-max_len) and each process at 2 GiB (-rss_limit_mb): an input
# that makes the code allocate without bound is a finding too.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-12}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(frames http_bodies tokens records ws_bytes)

export CARGO_TARGET_DIR="${PARLEY_FUZZ_TARGET_DIR:-$PWD/target/fuzz}"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps the instrumentation off build scripts and proc macros (as
# `cargo fuzz` does): they run on the host and have no libFuzzer to link.
HOST="$(rustc -vV | sed -n 's/^host: //p')"
echo "== building fuzz targets (libFuzzer, coverage-instrumented) in $CARGO_TARGET_DIR"
(cd fuzz && cargo build --release --locked --quiet --bins --target "$HOST")
BIN="$CARGO_TARGET_DIR/$HOST/release"

status=0
for t in "${TARGETS[@]}"; do
  work="target/fuzz-corpus/$t"
  mkdir -p "$work" "fuzz/artifacts/$t"
  echo "== fuzz $t for ${SECS}s"
  if ! "$BIN/$t" "$work" "fuzz/corpus/$t" \
      -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
      -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 2>"target/fuzz-$t.log"; then
    echo "FAIL: fuzz target $t found a crash (input in fuzz/artifacts/$t/; log target/fuzz-$t.log):" >&2
    tail -40 "target/fuzz-$t.log" >&2
    status=1
  else
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "target/fuzz-$t.log" | tr '\n' ' '
    echo
  fi
done
exit $status
