#!/usr/bin/env bash
# Held-out loss of the Go-source GPT example, loom vs its PyTorch twin
# (scripts/lm_twin.py: the same model, init scheme, AdamW, schedule, clipping,
# token shards and, from loom's sample ledger, the same data order), after the
# same token budget, for each seed. Prints both losses and their ratio.
# Usage: scripts/compare_lm.sh [seeds...]   (default: 1 2 3)
# Environment: STEPS (default 300, the example's), THREADS (default 2),
# PYTHON (default /usr/bin/python3). Needs python3-torch and python3-numpy
# (scripts/peers/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${*:-1 2 3}
steps=${STEPS:-300}
threads=${THREADS:-2}
py=${PYTHON:-$( [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3 )}
scripts/peers/setup.sh >/dev/null
make -s build datasets/gosrc/dataset.json
grep -m1 'model name' /proc/cpuinfo | sed 's/^.*: /cpu: /'
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cfg=examples/gpt-gosrc.yaml
field() { sed -n "s/^ *$1: *\([^ #]*\).*/\1/p" "$cfg" | head -1; }
printf '%-6s %12s %12s %8s\n' seed loom pytorch ratio
for seed in $seeds; do
  # The example with another seed, no checkpoints, its data path absolute.
  sed -e "s/^seed: .*/seed: $seed/" -e "s|path: ../datasets/gosrc|path: $PWD/datasets/gosrc|" \
      -e 's/^  every_steps: .*/  disabled: true/' "$cfg" > "$work/job.yaml"
  bin/loom launch "$work/job.yaml" --max-steps "$steps" --device "cpu:threads=$threads" --quiet --json \
      --sample-ledger "$work/ledger-$seed" > "$work/loom-$seed.json"
  loom=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["test_loss"])' "$work/loom-$seed.json")
  "$py" scripts/lm_twin.py --data datasets/gosrc --ledger "$work/ledger-$seed/local.jsonl" --seed "$seed" \
      --layers "$(field layers)" --heads "$(field heads)" --d-model "$(field d_model)" --context "$(field context)" \
      --vocab "$(field vocab)" --steps "$steps" --lr "$(field lr)" --weight-decay "$(field weight_decay)" \
      --clip "$(field clip_norm)" --warmup "$(field warmup_steps)" --min-lr-ratio "$(field min_lr_ratio)" \
      --threads "$threads" 2>/dev/null > "$work/torch-$seed.json"
  torch=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["val_loss"])' "$work/torch-$seed.json")
  "$py" -c 'import sys; s,a,b=sys.argv[1:]; print(f"{s:<6} {float(a):12.4f} {float(b):12.4f} {float(a)/float(b):8.4f}")' "$seed" "$loom" "$torch"
done
