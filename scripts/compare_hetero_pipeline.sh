#!/usr/bin/env bash
# Heterogeneous pipeline stages on this machine (issue 19's figure "4
# workers, one at cpu:slowdown=2: the measured partition >= 1.3x the
# tokens/s of an equal-layer-count partition"): the GPT of
# examples/gpt-pipeline.yaml (8 blocks) over 4 local workers of
# cpu:threads=1, the last (w3) throttled to half speed, launched as
#
#   loom launch examples/gpt-pipeline.yaml --workers 4 \
#     --worker-devices "cpu:threads=1;cpu:threads=1;cpu:threads=1;cpu:threads=1,slowdown=2" \
#     --pipeline-stages S --pipeline-partition measured|uniform --max-steps STEPS --json
#
# for two rows: 4 stages x 1 worker, and 2 stages x 2 workers. measured is
# the planner's split (cluster.pipeline_partition: measured, the default);
# uniform gives every stage the same number of blocks (DeepSpeed's
# partition_method uniform). In both the planner chooses which worker goes
# to which stage and, within a stage, each worker's share by speed.
#
# tokens/s is the summary's: the reporting rank's samples from the start of
# its first step to the end of its last, over the whole run of STEPS steps
# (the steps on the first plans, before every worker has measured its
# speed, and the pauses of every re-plan included; the worker processes'
# start and the device profiles before the first step are not). The first
# plan with all four workers is made within about a second of the launch,
# before the first step, from the device profiles; measured speeds follow
# after about 3 steps, and re-plans settle within about 10 s of them:
# STEPS (default 60, about a minute per run here) keeps that under a fifth
# of a run. The first plan cuts the blocks from the device profiles; once
# every worker has measured its speed in it the coordinator cuts again from
# the measurements and moves layers if that is predicted more than 5%
# faster (coordinator/planning.go): the blocks of measured in the table's
# last column are those of the run's final plan.
#
# The machine: this script prints the CPU and its cores. On a 2-core
# machine 4 workers of 1 thread each oversubscribe it (in a 1F1B steady
# state all 4 stages compute at once), and a slowdown=2 worker sleeps half
# its time, which gives its core to the others: the "fast" workers run at
# about the speed of 2 cores shared by 3.5 busy processes, not 1 core each,
# and with the machine's cores saturated the step is set by the total CPU
# work, which no partition changes: the ratio is squeezed towards 1.
# SLOWDOWN_BASE=B runs the fast workers at slowdown=B and the slow one at
# 2B (the same 2:1 speeds): with B=2 the four ask for about 1.75 cores, so
# on 2 cores they behave like four machines rather than four processes
# fighting for two, at half the tokens/s.
#
# Rounds alternate the two partitions (measured first in odd rounds,
# uniform first in even ones); the table gives each figure's median over
# the rounds and the ratio of the medians. Before each run the machine is
# given up to QUIET_WAIT s to fall below 10% busy (scripts/peers/quiet.py;
# the busy fraction it saw is printed): it is shared, so the figures are
# noisy.
#
# Usage: scripts/compare_hetero_pipeline.sh [rounds]   (default 3)
# Environment: STEPS (default 60), ROWS (default "4 2": the stage counts),
# SLOWDOWN_BASE (default 1, see above), LAYERS (the job's blocks, default
# 8: the planner's own step model predicts measured/uniform 1.27x for 8
# blocks over 4 stages with a 2:1 worker, 1.39x for 12, 1.45x for 16; 8
# blocks cannot reach 1.3x, whose best split is 2,1,3,2 against 2,2,2,2),
# QUIET_WAIT (default 30), LOOM_REV (build loom from a clean tree of this
# commit, e.g. HEAD, instead of the working tree), LOOM_BIN (run this loom
# binary instead of building one).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
steps=${STEPS:-60}
rows=${ROWS:-4 2}
quiet_wait=${QUIET_WAIT:-30}
base=${SLOWDOWN_BASE:-1}
layers=${LAYERS:-8}
for v in "$rounds" "$steps" "$quiet_wait" "$base" "$layers" $rows; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [rounds] (positive integers, also STEPS QUIET_WAIT SLOWDOWN_BASE LAYERS ROWS), got '$v'" >&2; exit 2; }
done
for s in $rows; do
  case $s in 2|4) ;; *) echo "ROWS: stage counts of 4 workers: 2 or 4, got $s" >&2; exit 2 ;; esac
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
loom=$tmp/loom
if [ -n "${LOOM_BIN:-}" ]; then
  loom=$LOOM_BIN
  what="loom binary $LOOM_BIN ($("$loom" version 2>/dev/null | head -1))"
elif [ -n "${LOOM_REV:-}" ]; then
  # A clean tree of that commit, built apart (the working tree may be
  # mid-edit); the working tree is not touched.
  mkdir "$tmp/src" && git archive "$LOOM_REV" | tar -x -C "$tmp/src"
  (cd "$tmp/src" && go build -o "$loom" ./cmd/loom)
  what="loom $(git rev-parse --short "$LOOM_REV") (clean tree)"
else
  go build -o "$loom" ./cmd/loom
  what="loom $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!scripts' 2>/dev/null || echo ' + uncommitted changes')"
fi
job=examples/gpt-pipeline.yaml
if [ "$layers" != 8 ]; then
  sed "s/^  layers: 8\$/  layers: $layers/" "$job" > "$tmp/job.yaml"
  grep -q "^  layers: $layers\$" "$tmp/job.yaml" || { echo "could not set model.layers in the job" >&2; exit 1; }
  job=$tmp/job.yaml
fi
devs="cpu:threads=1;cpu:threads=1;cpu:threads=1;cpu:threads=1,slowdown=2"
if [ "$base" -gt 1 ]; then
  f="cpu:threads=1,slowdown=$base"
  devs="$f;$f;$f;cpu:threads=1,slowdown=$((2 * base))"
fi
grep -m1 'model name' /proc/cpuinfo | sed 's/^.*: /cpu: /'
echo "cpu flags: $(grep -o -w 'avx2\|avx512f\|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')cores: $(nproc)"
echo "$what; $job, $steps steps; 4 workers: $devs"
[ "$(nproc)" -ge 4 ] || echo "note: $(nproc) cores for 4 worker processes of 1 thread each: oversubscribed"

quiet() { python3 scripts/peers/quiet.py 0.10 "$quiet_wait"; }
# run STAGES PARTITION prints "tokens/s blocks-per-stage slow-stage busy"
# of one launch: blocks per stage as 2,2,2,2, and the slow worker's (w3)
# stage as stage:blocks.
run() {
  local busy out
  busy=$(quiet)
  out=$("$loom" launch "$job" --workers 4 --worker-devices "$devs" --pipeline-stages "$1" \
        --pipeline-partition "$2" --max-steps "$steps" --json --quiet 2>"$tmp/loom.err" | tail -1) ||
    { cat "$tmp/loom.err" >&2; exit 1; }
  python3 -c 'import json, sys
s = json.loads(sys.argv[1])
assert s["status"] == "completed", s["status"]
by, slow = {}, "-"
for r in s["shares"]:
    a, _, b = r.get("blocks", "0-7").partition("-")
    st = r["stage"]
    by[st] = int(b or a) - int(a) + 1
    if r["worker"] == "w3":
        slow = f"{st}:{by[st]}"
print(round(s["tokens_per_s"], 1), ",".join(str(by[k]) for k in sorted(by)), slow, sys.argv[2])' "$out" "$busy"
}

: > "$tmp/rounds"
for r in $(seq "$rounds"); do
  order="measured uniform"
  [ $((r % 2)) -eq 0 ] && order="uniform measured"
  for s in $rows; do
    for p in $order; do
      # $(...) into a variable, then read: a failed run stops the script (set -e).
      out=$(run "$s" "$p"); read -r tok blocks slow busy <<< "$out"
      echo "$r $s $p $tok $blocks $slow" >> "$tmp/rounds"
      echo "round $r: $s stages, $p: $tok tokens/s (blocks $blocks, w3 on stage:blocks $slow, busy $busy)"
    done
  done
done
python3 - "$tmp/rounds" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print(f"\nmedian of {len({r[0] for r in rows})} rounds (tokens/s over the whole run)")
print(f"{'layout':<22} {'measured':>9} {'uniform':>9} {'ratio':>6}  per-round ratio  measured blocks (w3 stage:blocks)")
for s in dict.fromkeys(r[1] for r in rows):
    m = {r[0]: r for r in rows if r[1] == s and r[2] == "measured"}
    u = {r[0]: r for r in rows if r[1] == s and r[2] == "uniform"}
    mt = statistics.median(float(r[3]) for r in m.values())
    ut = statistics.median(float(r[3]) for r in u.values())
    per = " ".join(f"{float(m[k][3]) / float(u[k][3]):.2f}" for k in m if k in u)
    blocks = " ".join(f"{m[k][4]}({m[k][5]})" for k in m)
    name = f"{s} stages x {4 // int(s)} worker{'s' if int(s) < 4 else ''}"
    print(f"{name:<22} {mt:9.0f} {ut:9.0f} {mt / ut:5.2f}x  {per:<15}  {blocks}")
ub = sorted({f"{r[1]} stages: {r[4]}" for r in rows if r[2] == "uniform"})
print("uniform blocks: " + "; ".join(ub))
PY
