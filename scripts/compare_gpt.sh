#!/usr/bin/env bash
# The small GPT's training step, loom vs PyTorch, in one run on this machine:
# examples/gpt-bench.yaml against scripts/gpt_step.py (the same model, batch,
# data and AdamW step), fp32 and bf16, at each thread count. Each
# configuration runs in its own process, so peak RSS is its own.
# Usage: scripts/compare_gpt.sh [threads...]   (default: 1 2)
# Environment: MODES (default "fp32 bf16"), STEPS (timed steps, default 20),
# PYTHON (default /usr/bin/python3).
# Needs python3-torch (Debian's 1.13 is enough) and OpenBLAS, which
# scripts/peers/setup.sh installs; an inherited OPENBLAS_CORETYPE (which
# would pin OpenBLAS to older kernels) is dropped.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${*:-1 2}
modes=${MODES:-fp32 bf16}
steps=${STEPS:-20}
# Debian's python3-torch lives under /usr/bin/python3 (a pyenv or venv
# python3 first on PATH would not see it).
py=${PYTHON:-$( [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3 )}
# The peers' Debian packages (python3-torch, OpenBLAS, ...), installed if
# missing. Debian's torch does its fp32 GEMMs in whatever libblas.so.3 is:
# the reference BLAS (~5 GFLOP/s) unless OpenBLAS is the alternative chosen.
scripts/peers/setup.sh >/dev/null
blas=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || true)
case $blas in
  *openblas*) ;;
  *) echo "compare_gpt.sh: libblas.so.3 is ${blas:-missing}, not OpenBLAS: update-alternatives --config libblas.so.3-x86_64-linux-gnu" >&2; exit 1 ;;
esac
make -s build
grep -m1 'model name' /proc/cpuinfo | sed 's/^.*: /cpu: /'
echo "cpu flags: $(grep -o -w 'avx2\|avx512f\|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
for mode in $modes; do
  for th in $threads; do
    peer=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$py" scripts/gpt_step.py --precision "$mode" --threads "$th" --steps "$steps" --trials 3 | tail -1)
    ours=$(bin/loom bench train examples/gpt-bench.yaml --precision "$mode" --threads "$th" \
           --steps $((3 * steps)) --json | tail -1)
    "$py" - "$mode" "$th" "$peer" "$ours" <<'PY'
import json, sys
mode, th, peer, ours = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
p, o = peer["tokens_per_s"], ours["tokens_per_s"]
print(f"{mode} threads={th}  loom {o:7.0f} tok/s {ours['step_ms']:6.1f} ms/step RSS {ours['peak_rss_mib']:4.0f} MiB | "
      f"pytorch {peer['torch']} {p:7.0f} tok/s {peer['step_ms']:6.1f} ms/step RSS {peer['peak_rss_mib']:4.0f} MiB | "
      f"speed {o/p:.2f}x  memory {ours['peak_rss_mib']/peer['peak_rss_mib']:.2f}x | "
      f"loom model {ours['model_gflops']:.1f} GFLOP/s = {ours['model_gflops']/ours['gemm_peak_gflops']:.0%} of its GEMM peak {ours['gemm_peak_gflops']:.1f}")
PY
  done
done
