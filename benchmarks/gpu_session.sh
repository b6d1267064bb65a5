#!/usr/bin/env bash
# One device call's worth of GPU work (see README "GPU checks"): build against the machine's
# CUDA torch, run the whole test suite (the cuda-marked tests included), run the CUDA tests
# once under compute-sanitizer's memcheck, then the benchmark. Logs go to $OUT (or ./gpu-out).
#   bash benchmarks/gpu_session.sh [bench args...]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$python" -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
  nvcc --version | tail -2
} 2>&1 | tee "$out/device.txt"

PYBERT_CUDA=1 MAX_JOBS=16 "$python" -m pip install --no-build-isolation --no-deps -v . \
  > "$out/build.log" 2>&1 || { tail -50 "$out/build.log"; echo "BUILD FAILED"; exit 1; }
echo "build ok"

# The suite from outside the checkout, against the installed package.
(cd tests && "$python" -m pytest -q -rs -x --timeout=900 -p no:cacheprovider . ) \
  2>&1 | tee "$out/tests.log" | tail -30

(cd tests && compute-sanitizer --tool memcheck --error-exitcode 1 \
  "$python" -m pytest -q -x -p no:cacheprovider -m cuda test_kernels.py test_engine.py \
  -k "not 256 and not 300") > "$out/memcheck.log" 2>&1  # memcheck is ~100x slower: skip the largest shapes
echo "memcheck exit $? (log: memcheck.log)"; tail -5 "$out/memcheck.log"

"$python" benchmarks/bench_gpu.py --json "$out/bench.json" "$@" 2>&1 | tee "$out/bench.log"
