#!/usr/bin/env bash
# The GPU check (issue 19; docs/benchmarks.md, "GPU check"): one command, every figure in
# $OUT/gpu_check.json (OUT defaults to ./gpu_check_out). Installs nothing, needs no network.
#   bash benchmarks/gpu_check.sh                 # on the GPU machine: ends in under 5 minutes
#   bash benchmarks/gpu_check.sh --cpu           # dry mode: the same steps, tiny, on a CPU
#   bash benchmarks/gpu_check.sh --parts compile,bisect --keep   # some parts again (setup data reused)
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu_check_out}"
export OUT
case " $* " in
  *" --cpu "*) export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" ;;  # the CPU box is shared: one thread
esac
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
fi
exec "$PY" benchmarks/gpu_check.py --out "$OUT" "$@"
