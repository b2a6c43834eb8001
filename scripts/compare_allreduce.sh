#!/usr/bin/env bash
# All-reduce busbw, loom beside the peers, in one run on this machine: for
# each rank count, scripts/peers/allreduce.sh (Gloo, OpenMPI over TCP and
# over shared memory), then loom between local processes (payloads through
# shared memory, the default on one host) and loom over TCP only
# (--shm-ring 0, as between hosts), then the same over mutual TLS (--tls,
# what a cluster with certificates runs), each the median of --trials 3.
# Usage: scripts/compare_allreduce.sh [ranks...]   (default: 2 4)
# Prints one JSON line per implementation, size and rank count, then a table
# of loom (shared memory) / Gloo per size.
set -euo pipefail
cd "$(dirname "$0")/.."
anchors=${ANCHORS:-scripts/peers}
ranks=${*:-2 4}
sizes=1,16,64
make -s build
out=$(mktemp)
trap 'rm -f "$out" "$out.raw"' EXIT
for n in $ranks; do
  "$anchors/allreduce.sh" "$n" "$sizes" | grep '^{' > "$out.raw"
  # allreduce.sh prints OpenMPI over TCP first, then over shared memory.
  python3 - "$out.raw" >> "$out" <<'PY'
import json, sys
seen = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    if d["impl"].startswith("openmpi"):
        key = (d["world"], d["size_mib"])
        d["impl"] = "openmpi-tcp" if key not in seen else "openmpi-shm"
        seen[key] = True
    print(json.dumps(d))
PY
  bin/loom bench allreduce --ranks "$n" --size "$sizes" --trials 3 --json >> "$out"
  bin/loom bench allreduce --ranks "$n" --size "$sizes" --trials 3 --json --shm-ring 0 >> "$out"
  bin/loom bench allreduce --ranks "$n" --size "$sizes" --trials 3 --json --shm-ring 0 --tls >> "$out"
done
cat "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
bw = {(r["impl"], r["world"], round(r["size_mib"])): r["busbw_GBps"] for r in rows}
impls = ["loom-ring-shm", "loom-ring-tcp", "torch-gloo", "openmpi-tcp", "openmpi-shm", "loom-ring-tls"]
print(f"{'ranks':>5} {'MiB':>4} " + " ".join(f"{i:>14}" for i in impls) + "   shm/gloo  tcp/gloo  tls/gloo")
for n, mib in sorted({(w, m) for _, w, m in bw}):
    v = [bw.get((i, n, mib), float("nan")) for i in impls]
    print(f"{n:>5} {mib:>4} " + " ".join(f"{x:>14.3f}" for x in v) + f"   {v[0]/v[2]:8.2f}x {v[1]/v[2]:8.2f}x {v[5]/v[2]:8.2f}x")
PY
