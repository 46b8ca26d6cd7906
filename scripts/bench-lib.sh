# Sourced by the benchmark scripts (bench.sh, bench-compare.sh, bench-compare-cluster.sh).

# The wave-1 node: the default older build of the side-by-side comparisons.
BENCH_WAVE1=12012e6

# Run the command "$1" once per scenario of the other arguments, one after the other:
# `SCENARIO FLAGS... --then SCENARIO FLAGS...` (e.g. overload, then the load dropped at once).
each_scenario() {
  local run="$1" arg
  shift
  local args=()
  for arg in "$@"; do
    if [ "$arg" = "--then" ]; then
      "$run" "${args[@]}"
      args=()
    else
      args+=("$arg")
    fi
  done
  "$run" "${args[@]}"
}
