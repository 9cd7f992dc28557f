#!/usr/bin/env bash
# Alternating A/B runs of `kv bench` (64-client puts by default) between two checkouts,
# each started fresh on the same machine, e.g. before and after a change:
#   git worktree add /tmp/before <commit>
#   scripts/bench_ab.sh /tmp/before . 5
# Prints one line per run: label, puts/s, p50 ms, p99 ms. Both checkouts use this
# repository's venv (.venv), with PYTHONPATH pointing at the checkout being measured.
set -u
A=$(readlink -f "$1"); B=$(readlink -f "$2"); ROUNDS=${3:-5}
PY="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"  # not resolved: the venv is the point
BENCH_ARGS=${BENCH_ARGS:---clients 64 --workload put --duration 10}
run() {
  local tree=$1 label=$2 out
  cd "$tree" || return
  PYTHONPATH=$tree "$PY" -m cli.main cluster down >/dev/null 2>&1
  PYTHONPATH=$tree "$PY" -m cli.main cluster up --fresh >/dev/null 2>&1 || { echo "$label: up failed"; return; }
  # shellcheck disable=SC2086
  out=$(PYTHONPATH=$tree "$PY" -m cli.main bench $BENCH_ARGS --json 2>/dev/null)
  echo "$label $(echo "$out" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); l=d["latency"]["all"]; print(round(d["throughput_ops_s"]), l["p50_ms"], l["p99_ms"])')"
  PYTHONPATH=$tree "$PY" -m cli.main cluster down >/dev/null 2>&1
}
for _ in $(seq 1 "$ROUNDS"); do
  run "$A" A
  run "$B" B
done
