#!/usr/bin/env bash
# loom data prepare against the least a Go program does with the same
# tokenizer, in one run on this machine: GPT-2 tokens of the Go standard
# library's source ($(go env GOROOT)/src, *.go files). The peer,
# scripts/peers/tokenize_go, walks the same files and encodes them with the
# same codec (tiktoken-go r50k_base) on the same number of goroutines,
# writing nothing; loom's figure also includes the walk, writing the shards
# and dataset.json, and fsync. Each runs TRIALS times, alternating; the
# medians and their ratio are printed.
# Usage: scripts/compare_prepare.sh [SRC]   (default: $(go env GOROOT)/src)
# Environment: TRIALS (default 3), WORKERS (default: the CPU count).
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-$(go env GOROOT)/src}
trials=${TRIALS:-3}
workers=${WORKERS:-$(nproc)}
make -s build
peer=$(mktemp -d)/tokenize_go
go build -o "$peer" ./scripts/peers/tokenize_go
out=$(mktemp -d)
trap 'rm -rf "$out" "$(dirname "$peer")"' EXIT
grep -m1 'model name' /proc/cpuinfo | sed 's/^.*: /cpu: /'
echo "cores: $(nproc), workers: $workers, go: $(go env GOVERSION), input: $src (*.go)"
field() { sed -n "s/.*\"$1\":\([0-9.e+]*\).*/\1/p"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ours=() theirs=()
for i in $(seq "$trials"); do
  o=$(bin/loom data prepare "$src" --include '*.go' --out "$out/ds" --overwrite --workers "$workers" --json 2>/dev/null)
  p=$("$peer" --include '*.go' --workers "$workers" --json "$src")
  ours+=("$(echo "$o" | field tokens_per_s)")
  theirs+=("$(echo "$p" | field tokens_per_s)")
  echo "trial $i: loom $(echo "$o" | field tokens) tokens $(printf %.0f "${ours[-1]}") tokens/s | peer $(echo "$p" | field tokens) tokens $(printf %.0f "${theirs[-1]}") tokens/s"
done
mo=$(printf '%s\n' "${ours[@]}" | median)
mp=$(printf '%s\n' "${theirs[@]}" | median)
awk -v o="$mo" -v p="$mp" -v n="$trials" 'BEGIN {printf "median of %d: loom data prepare %.2fM tokens/s, tokenize_go %.2fM tokens/s, ratio %.2f\n", n, o/1e6, p/1e6, o/p}'
