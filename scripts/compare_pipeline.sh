#!/usr/bin/env bash
# Pipeline stages of the small GPT, loom vs PyTorch's GPipe, in one run on
# this machine: `loom launch examples/gpt-bench.yaml --workers S
# --pipeline-stages S` (one worker process per stage, cpu:threads=1 each)
# with the gpipe schedule (the like-for-like row) and with 1f1b, against
# scripts/gpipe_gpt.py (torch.distributed.pipeline.sync.Pipe, torch 1.13) on
# the same stages, the same blocks per stage (those loom's planner chose in
# the round's gpipe run) and the same micro-batches (train.micro_batches =
# Pipe's chunks), with checkpoint=never (loom keeps activations; Pipe's
# default except_last, which recomputes forwards, is a row of its own).
#
# Threads: loom runs S processes of 1 thread each; torch 1.13's Pipe on CPU
# runs every stage in one process, on one shared worker thread (one per
# device, and all stages are on "cpu"), so its stages never overlap; it gets
# S intra-op threads in that process (TORCH_THREADS) so that both use S
# cores. On a 2-core machine: 2 stages, 2 loom processes x 1 thread, torch
# 1 process x 2 threads.
#
# loom's tokens/s is its summary's (the reporting rank's samples from the
# start of its first step to the end of its last, over LOOM_STEPS steps, the
# first steps and any re-plan included); torch's is the timed tokens over
# the wall time of TORCH_STEPS steps after 1 + WARMUP untimed ones.
# Rounds alternate the runs; the table gives each row's median and the
# ratios of medians. Before each run the machine is given up to
# QUIET_WAIT s to fall below 10% busy (scripts/peers/quiet.py; the busy
# fraction it saw is printed): it is shared, so the figures are noisy.
#
# Usage: scripts/compare_pipeline.sh [rounds]   (default 3)
# Environment: STAGES (default 2), CHUNKS (micro-batches, default 4),
# LOOM_STEPS (default 60), TORCH_STEPS (default 40), WARMUP (default 3),
# TORCH_THREADS (default STAGES), QUIET_WAIT (default 30),
# PYTHON (default /usr/bin/python3, Debian's python3-torch), LOOM_REV (build
# loom from a clean tree of this commit, e.g. HEAD, instead of the working tree).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
stages=${STAGES:-2}
chunks=${CHUNKS:-4}
loom_steps=${LOOM_STEPS:-60}
torch_steps=${TORCH_STEPS:-40}
warmup=${WARMUP:-3}
torch_threads=${TORCH_THREADS:-$stages}
quiet_wait=${QUIET_WAIT:-30}
for v in "$rounds" "$stages" "$chunks" "$loom_steps" "$torch_steps" "$torch_threads"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [rounds] (positive integers, also STAGES CHUNKS LOOM_STEPS TORCH_STEPS TORCH_THREADS), got '$v'" >&2; exit 2; }
done
py=${PYTHON:-$( [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3 )}
scripts/peers/setup.sh >/dev/null
blas=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || true)
case $blas in
  *openblas*) ;;
  *) echo "compare_pipeline.sh: libblas.so.3 is ${blas:-missing}, not OpenBLAS: update-alternatives --config libblas.so.3-x86_64-linux-gnu" >&2; exit 1 ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
loom=/tmp/loom
if [ -n "${LOOM_REV:-}" ]; then
  # A clean tree of that commit, built apart (the working tree may be
  # mid-edit); the working tree is not touched.
  mkdir "$tmp/src" && git archive "$LOOM_REV" | tar -x -C "$tmp/src"
  (cd "$tmp/src" && go build -o "$loom" ./cmd/loom)
  what="loom $(git rev-parse --short "$LOOM_REV") (clean tree)"
else
  go build -o "$loom" ./cmd/loom
  what="loom $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!scripts' 2>/dev/null || echo ' + uncommitted changes')"
fi
grep -m1 'model name' /proc/cpuinfo | sed 's/^.*: /cpu: /'
echo "cpu flags: $(grep -o -w 'avx2\|avx512f\|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')cores: $(nproc)"
echo "$what, torch $("$py" -c 'import torch; print(torch.__version__)')"
# The job with its micro-batches set (launch has no flag for them).
sed "s/^  global_batch: 16 .*\$/&\n  micro_batches: $chunks/" examples/gpt-bench.yaml > "$tmp/job.yaml"
grep -q "^  micro_batches: $chunks\$" "$tmp/job.yaml" || { echo "could not set train.micro_batches in the job" >&2; exit 1; }

quiet() { "$py" scripts/peers/quiet.py 0.10 "$quiet_wait"; }
# loom_run SCHEDULE prints "tokens/s blocks-per-stage busy" of one launch.
loom_run() {
  local busy out
  busy=$(quiet)
  out=$("$loom" launch "$tmp/job.yaml" --workers "$stages" --pipeline-stages "$stages" --pipeline-schedule "$1" \
        --device cpu:threads=1 --max-steps "$loom_steps" --json --quiet 2>"$tmp/loom.err" | tail -1) ||
    { cat "$tmp/loom.err" >&2; exit 1; }
  python3 -c 'import json, sys
s = json.loads(sys.argv[1])
assert s["status"] == "completed", s["status"]
by = {}
for r in s["shares"]:
    a, _, b = r["blocks"].partition("-")
    by[r["stage"]] = int(b or a) - int(a) + 1
print(round(s["tokens_per_s"], 1), ",".join(str(by[k]) for k in sorted(by)), sys.argv[2])' "$out" "$busy"
}
# torch_run BLOCKS CHECKPOINT prints "tokens/s step_ms busy" of one peer run.
torch_run() {
  local busy out
  busy=$(quiet)
  out=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$py" scripts/gpipe_gpt.py --stages "$stages" --blocks "$1" \
        --chunks "$chunks" --threads "$torch_threads" --steps "$torch_steps" --warmup "$warmup" --checkpoint "$2" 2>"$tmp/torch.err" | tail -1) ||
    { cat "$tmp/torch.err" >&2; exit 1; }
  python3 -c 'import json, sys
p = json.loads(sys.argv[1])
print(round(p["tokens_per_s"], 1), round(p["step_ms"], 1), sys.argv[2])' "$out" "$busy"
}

echo "stages $stages, micro-batches $chunks; loom: $stages processes x cpu:threads=1, $loom_steps steps;" \
     "torch Pipe: 1 process x $torch_threads threads, $torch_steps timed steps after $((warmup + 1))"
: > "$tmp/rounds"
for r in $(seq "$rounds"); do
  # $(...) into a variable, then read: a failed run stops the script (set -e).
  out=$(loom_run gpipe); read -r lg bg qg <<< "$out"
  out=$(loom_run 1f1b); read -r l1 b1 q1 <<< "$out"
  out=$(torch_run "$bg" never); read -r tn sn qn <<< "$out"
  out=$(torch_run "$bg" except_last); read -r te se qe <<< "$out"
  echo "$lg $l1 $tn $te $bg $b1" >> "$tmp/rounds"
  echo "round $r: loom gpipe $lg tok/s (blocks $bg, busy $qg) | loom 1f1b $l1 (blocks $b1, busy $q1) |" \
       "torch never $tn ($sn ms/step, busy $qn) | torch except_last $te ($se ms/step, busy $qe)"
done
python3 - "$tmp/rounds" "$stages" "$chunks" "$torch_threads" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
stages, chunks, th = sys.argv[2:5]
col = lambda i: [float(r[i]) for r in rows]
lg, l1, tn, te = (statistics.median(col(i)) for i in range(4))
blocks = sorted({r[4] for r in rows} | {r[5] for r in rows})
per = lambda i: " ".join(f"{float(r[i]):.0f}" for r in rows)
print(f"\nmedian of {len(rows)} rounds; stages {stages}, blocks per stage {' / '.join(blocks)}, micro-batches {chunks}")
print(f"{'run':<58} {'tokens/s':>9}  {'loom/torch':>10}  per round")
print(f"{'loom gpipe  (' + stages + ' procs x 1 thread)':<58} {lg:9.0f}  {lg/tn:9.2f}x  {per(0)}")
print(f"{'loom 1f1b   (' + stages + ' procs x 1 thread)':<58} {l1:9.0f}  {l1/tn:9.2f}x  {per(1)}")
print(f"{'torch Pipe gpipe, checkpoint=never (1 proc x ' + th + ' threads)':<58} {tn:9.0f}  {'1.00x':>10}  {per(2)}")
print(f"{'torch Pipe gpipe, checkpoint=except_last (its default)':<58} {te:9.0f}  {lg/te:9.2f}x  {per(3)}"
      f"   (never is {tn/te:.2f}x it)")
print("per round loom gpipe / torch never: " + " ".join(f"{float(r[0])/float(r[2]):.2f}" for r in rows))
if len(blocks) > 1:
    print("note: loom's planner chose different blocks in different runs; torch ran each round's gpipe blocks")
PY
