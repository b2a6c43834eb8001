#!/usr/bin/env bash
# Data-parallel MNIST MLP, loom vs PyTorch DDP (Gloo), in one run on this
# machine: the same model (784-512-256-10), optimizer (SGD momentum 0.9,
# lr 0.01), batch 64 per rank, one epoch (plus the peer's 20 warm-up steps),
# one thread per rank.
# Usage: scripts/compare_ddp.sh [ranks...]   (default: 1 2 4)
# Uses scripts/peers (the peer scripts; they install what they need with
# apt-get). Prints one line per run and
# the samples/s ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
anchors=${ANCHORS:-scripts/peers}
ranks=${*:-1 2 4}
make -s build
# The peer trains 20 untimed warm-up steps before its timed epoch of
# (60000/ranks)//64 steps; loom trains the same number of steps, so that the
# accuracies compare equal training (throughput is each one's own measure).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed 's/^  epochs: 1$/  epochs: 2/' examples/mnist-mlp-sgd.yaml > "$tmp/job.yaml"
for n in $ranks; do
  peer=$("$anchors/ddp_mlp.sh" "$n" mnist --epochs 1 | tail -1)
  ours=$(bin/loom launch "$tmp/job.yaml" --workers "$n" --device cpu:threads=1 \
         --global-batch $((64 * n)) --max-steps $((60000 / n / 64 + 20)) --json --quiet 2>/dev/null | tail -1)
  python3 - "$n" "$peer" "$ours" <<'PY'
import json, sys
n, peer, ours = int(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
p, o = peer["samples_per_s"], ours["samples_per_s"]
print(f"ranks={n}  loom {o:9.0f} samples/s acc {ours['test_accuracy']:.4f} ({ours['steps']} steps) | "
      f"pytorch-ddp-gloo {p:9.0f} samples/s acc {peer.get('test_acc') or 0:.4f} | ratio {o/p:.2f}x")
PY
done
