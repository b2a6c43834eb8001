#!/usr/bin/env bash
# Cost of the Prometheus metrics on the 2-worker MNIST job: runs
# examples/mnist-mlp.yaml with `loom launch --workers 2` RUNS times without
# and RUNS times with --metrics-addr (each worker then serves /metrics), in
# alternating order, and prints the median samples/s of each and their
# ratio. Both write the per-step metrics.jsonl (on whenever checkpointing is).
# Usage: scripts/metrics_overhead.sh [steps]   (default 300; RUNS=3, DEVICE=cpu:threads=1)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300}
runs=${RUNS:-3}
device=${DEVICE:-cpu:threads=1}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/loom" ./cmd/loom
# The example (it sets no checkpoint section), checkpointing to scratch.
cp examples/mnist-mlp.yaml "$tmp/job.yaml"
printf 'checkpoint:\n  dir: %s\n' "$tmp/ckpt" >> "$tmp/job.yaml"
run() { # $@: extra flags; prints samples/s
  "$tmp/loom" launch "$tmp/job.yaml" --workers 2 --device "$device" --max-steps "$steps" \
    --quiet --json --overwrite "$@" 2>/dev/null | # --overwrite: the previous run's checkpoints
    python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["samples_per_s"])'
}
off=() on=()
for i in $(seq "$runs"); do # alternating which goes first
  if ((i % 2)); then
    off+=("$(run)")
    on+=("$(run --metrics-addr 127.0.0.1:0)")
  else
    on+=("$(run --metrics-addr 127.0.0.1:0)")
    off+=("$(run)")
  fi
  echo "run $i: without ${off[-1]} samples/s, with ${on[-1]} samples/s" >&2
done
python3 - "${off[*]}" "${on[*]}" "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" <<'PY'
import statistics, sys
off, on = (list(map(float, a.split())) for a in sys.argv[1:3])
m_off, m_on = statistics.median(off), statistics.median(on)
print(f"cpu: {sys.argv[3]}")
print(f"without --metrics-addr: median {m_off:.0f} samples/s  {off}")
print(f"with    --metrics-addr: median {m_on:.0f} samples/s  {on}")
print(f"ratio with/without: {m_on / m_off:.4f}")
PY
