#!/usr/bin/env bash
# GPU check of the samsparse CUDA backend (build, correctness, speed, memcheck, ...).
# Run from the repo root:
#   export PYTHONPATH=$PWD; bash scripts/check_cuda_gpu.sh [--fast] [--only build,correct,bench,memcheck]
# Output: stdout, plus logs and JSON under $OUT when set. Every stage has its own timeout.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  "$PY" scripts/check_cuda_gpu.py "$@" 2>&1 | tee "$OUT/cuda_check.log"
  exit "${PIPESTATUS[0]}"
fi
exec "$PY" scripts/check_cuda_gpu.py "$@"
