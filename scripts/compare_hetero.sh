#!/usr/bin/env bash
# Heterogeneous pair on this machine: a worker with cpu:threads=1 and one
# throttled to half speed (cpu:threads=1,slowdown=2), each measured alone,
# then together with speed-balanced shares and with equal shares, at the
# same global batch (the job of examples/mnist-mlp-sgd.yaml, one epoch unless
# told otherwise: at large batches an epoch is only a few dozen steps, and a
# pair's first steps run on shares from the devices' profiles until the
# planner has measured both workers, so more epochs show the steady state).
# As a control, two full-speed workers train the same job together: what a
# synchronous pair loses on this machine when nothing is heterogeneous.
# Usage: scripts/compare_hetero.sh [global-batch] [rounds] [epochs]   (default 128 1 1)
# Prints one line per round: samples/s alone, the pair, pair / sum, the
# fast worker's fraction of each batch in the pair's last plan, and the
# control pair / twice the fast worker alone.
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
# sps prints a run's samples/s; with workers, also the fast worker's (w0)
# fraction of the batch in the last plan.
sps() {
  bin/loom launch "$@" --global-batch "$batch" --json --quiet 2>/dev/null | tail -1 |
    python3 -c 'import json,sys
s = json.load(sys.stdin)
sh = {r["worker"]: r["samples"] for r in s.get("shares", [])}
fast = sh.get("w0", 0) / sum(sh.values()) if sh else None
print(round(s["samples_per_s"]), end="")
print(f" {fast:.3f}" if sh else "")'
}
pair="cpu:threads=1;cpu:threads=1,slowdown=2"
: > "$tmp/rounds"
for _ in $(seq "$rounds"); do
  fast=$(sps "$tmp/speed.yaml" --workers 1 --device cpu:threads=1)
  slow=$(sps "$tmp/speed.yaml" --workers 1 --device cpu:threads=1,slowdown=2)
  # $(...) rather than <(...): a failed run stops the script (set -e).
  out=$(sps "$tmp/speed.yaml" --workers 2 --worker-devices "$pair")
  read -r both share <<< "$out"
  out=$(sps "$tmp/equal.yaml" --workers 2 --worker-devices "$pair")
  read -r equal _ <<< "$out"
  out=$(sps "$tmp/speed.yaml" --workers 2 --device cpu:threads=1)
  read -r twins _ <<< "$out"
  echo "$fast $slow $both $equal $share $twins" >> "$tmp/rounds"
  python3 - "$batch" "$fast" "$slow" "$both" "$equal" "$epochs" "$share" "$twins" <<'PY'
import sys
b, f, s, p, e = map(int, sys.argv[1:6])
t = int(sys.argv[8])
print(f"batch={b} epochs={sys.argv[6]}  fast alone {f}  slow alone {s}  sum {f+s} | pair (speed shares) {p} = {p/(f+s):.2f}x sum,"
      f" fast worker's share {sys.argv[7]} | pair (equal shares) {e} = {e/(f+s):.2f}x sum"
      f" | control: two fast workers {t} = {t/(2*f):.2f}x twice alone")
PY
done
# The machine's speed drifts from minute to minute: with several rounds,
# also the median of each figure and the ratio of those medians.
if [ "$rounds" -gt 1 ]; then
  python3 - "$tmp/rounds" <<'PY'
import statistics, sys
rounds = [[float(v) for v in l.split()] for l in open(sys.argv[1])]
f, s, p, e, sh, t = (statistics.median(c) for c in zip(*rounds))
ratios = " ".join(f"{r[2]/(r[0]+r[1]):.2f}" for r in rounds)
control = " ".join(f"{r[5]/(2*r[0]):.2f}" for r in rounds)
print(f"medians: fast alone {f:.0f}  slow alone {s:.0f}  sum {f+s:.0f} | pair (speed shares) {p:.0f} = {p/(f+s):.2f}x sum,"
      f" fast worker's share {sh:.3f} | pair (equal shares) {e:.0f} = {e/(f+s):.2f}x sum"
      f" | control: two fast workers {t:.0f} = {t/(2*f):.2f}x twice alone")
print(f"per round: pair (speed shares) / sum {ratios}; control / twice alone {control}")
PY
fi
