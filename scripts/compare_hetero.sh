#!/usr/bin/env bash
# Heterogeneous pair on this machine: a worker with cpu:threads=1 and one
# throttled to half speed (cpu:threads=1,slowdown=2), each measured alone,
# then together with speed-balanced shares and with equal shares, at the
# same global batch (the job of examples/mnist-mlp-sgd.yaml, one epoch unless
# told otherwise: at large batches an epoch is only a few dozen steps, and the
# first second of a pair runs at equal shares until the planner has measured
# both workers, so more epochs show the steady state).
# Usage: scripts/compare_hetero.sh [global-batch] [rounds] [epochs]   (default 128 1 1)
# Prints one line per round: samples/s alone, the pair, and pair / sum.
set -euo pipefail
cd "$(dirname "$0")/.."
batch=${1:-128}
rounds=${2:-1}
epochs=${3:-1}
for v in "$batch" "$rounds" "$epochs"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [global-batch] [rounds] [epochs] (positive integers), got '$v'" >&2; exit 2; }
done
make -s build
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s/^  epochs: 1\$/  epochs: $epochs/" examples/mnist-mlp-sgd.yaml > "$tmp/speed.yaml"
grep -q "^  epochs: $epochs\$" "$tmp/speed.yaml" || { echo "could not set epochs in the job" >&2; exit 1; }
{ cat "$tmp/speed.yaml"; echo "cluster: {balance: equal}"; } > "$tmp/equal.yaml"
sps() {
  bin/loom launch "$@" --global-batch "$batch" --json --quiet 2>/dev/null | tail -1 |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["samples_per_s"]))'
}
pair="cpu:threads=1;cpu:threads=1,slowdown=2"
: > "$tmp/rounds"
for _ in $(seq "$rounds"); do
  fast=$(sps "$tmp/speed.yaml" --workers 1 --device cpu:threads=1)
  slow=$(sps "$tmp/speed.yaml" --workers 1 --device cpu:threads=1,slowdown=2)
  both=$(sps "$tmp/speed.yaml" --workers 2 --worker-devices "$pair")
  equal=$(sps "$tmp/equal.yaml" --workers 2 --worker-devices "$pair")
  echo "$fast $slow $both $equal" >> "$tmp/rounds"
  python3 - "$batch" "$fast" "$slow" "$both" "$equal" "$epochs" <<'PY'
import sys
b, f, s, p, e = map(int, sys.argv[1:6])
print(f"batch={b} epochs={sys.argv[6]}  fast alone {f}  slow alone {s}  sum {f+s} | pair (speed shares) {p} = {p/(f+s):.2f}x sum"
      f" | pair (equal shares) {e} = {e/(f+s):.2f}x sum")
PY
done
# The machine's speed drifts from minute to minute: with several rounds,
# also the median of each figure and the ratio of those medians.
if [ "$rounds" -gt 1 ]; then
  python3 - "$tmp/rounds" <<'PY'
import statistics, sys
f, s, p, e = (statistics.median(c) for c in zip(*(map(int, l.split()) for l in open(sys.argv[1]))))
print(f"medians: fast alone {f:.0f}  slow alone {s:.0f}  sum {f+s:.0f} | pair (speed shares) {p:.0f} = {p/(f+s):.2f}x sum"
      f" | pair (equal shares) {e:.0f} = {e/(f+s):.2f}x sum")
PY
fi
