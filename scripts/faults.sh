#!/usr/bin/env bash
# The fault matrix of issue 16 on a real cluster on this machine: 3
# coordinators and 3 workers with default settings, an MNIST MLP epoch, one
# fault per case at step 80. Prints per case the time from the fault to the
# next completed step, the steps redone, whether every sample was used
# exactly once (the workers' sample ledgers reconciled), and the final test
# accuracy beside the fault-free run. The link-cut cases need root (network
# namespaces, internal/netlab); without it they say skipped.
#   scripts/faults.sh                       # every case
#   scripts/faults.sh -cases "worker SIGKILL,worker SIGSTOP" -keep
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build
lscpu | sed -n 's/^Model name: *//p'
exec go run ./scripts/faults -loom bin/loom "$@"
