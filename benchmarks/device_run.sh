#!/usr/bin/env bash
# The GPU run in one command (benchmarks/device_run.py does the work; see its docstring):
#   1. a time estimate from the FLOPs and bytes, at the device's measured matmul rate and bandwidth,
#      and the vmap path's memory from its array sizes (80 GB / 141 GB verdicts);
#   2. `jaxntk bench` at the paper's size (d=100, n=1000, m=10 000): roofline, step rows, vmap/map;
#   3. the authors' λ sweep, 6 λ × 3 seeds, T = 20 000, "regularized", one vmapped program per
#      seed (compiled once), writing lambda-sweep.json/.npz/.png.
# Everything goes to $OUT (default device-run/). Sizes from the environment, so the test suite runs
# it at a tiny size on CPU:
#   D N M N_TEST STEPS EVAL_EVERY SEEDS BENCH_VARIANTS BENCH_T1 BENCH_T2 BENCH_REPEATS
#   BENCH_PRESET (full: matmul 2048², triad 2²⁵; tiny for the tests) BENCH_STORAGE (σ', σ''
#   dtypes of the closed-form step rows, default float32,bfloat16) BENCH_TAYLOR=0 (no generic rows)
#   SKIP_BENCH=1 SKIP_SWEEP=1 CHECK_MEMORY=1 (compile the chunk and print XLA's memory beside the
#   formula) LIMIT_S (default 480: the whole run is stopped after 8 minutes) PYTHON
#
#   bash benchmarks/device_run.sh                      # the paper's size, on the GPU
#   D=6 N=20 M=40 N_TEST=40 STEPS=20 EVAL_EVERY=10 OUT=/tmp/dr bash benchmarks/device_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
args=(
  --out "${OUT:-device-run}"
  --d "${D:-100}" --n "${N:-1000}" --m "${M:-10000}" --n-test "${N_TEST:-10000}"
  --steps "${STEPS:-20000}" --eval-every "${EVAL_EVERY:-250}" --seeds "${SEEDS:-1,11,111}"
  --bench-variants "${BENCH_VARIANTS:-regularized,ntk+quadntk}"
  --bench-steps "${BENCH_T1:-20}" "${BENCH_T2:-120}" --bench-repeats "${BENCH_REPEATS:-2}"
  --bench-preset "${BENCH_PRESET:-full}" --bench-storage "${BENCH_STORAGE:-float32,bfloat16}"
)
[[ "${BENCH_TAYLOR:-1}" == 0 ]] && args+=(--bench-no-taylor)
[[ "${SKIP_BENCH:-0}" == 1 ]] && args+=(--skip-bench)
[[ "${SKIP_SWEEP:-0}" == 1 ]] && args+=(--skip-sweep)
[[ "${CHECK_MEMORY:-0}" == 1 ]] && args+=(--check-memory)
uptime || true
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv 2>/dev/null || true
exec timeout "${LIMIT_S:-480}" "$PYTHON" benchmarks/device_run.py "${args[@]}"
