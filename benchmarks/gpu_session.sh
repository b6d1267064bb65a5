#!/usr/bin/env bash
# GPU work for one device call (10 minutes at most a call): run the stages named, in order.
#   bash benchmarks/gpu_session.sh [build] [test] [memcheck] [bench] [texts] [pretrain]
# Default: build test memcheck. Logs go to $OUT (or ./gpu-out).
#
# build     builds pybert._C in place against the machine's CUDA torch (pybert/_C*.so; copy it
#           to $OUT and `carry` it back into pybert/ to skip the build in a later call)
# test      the whole suite (cuda-marked tests included) against the checkout (PYTHONPATH=.)
# memcheck  the CUDA tests once under compute-sanitizer (largest shapes skipped: ~100x slower)
# bench     benchmarks/bench_gpu.py (torch.compile's max-autotune alone takes minutes)
# texts     benchmarks/bench_texts.py (pass --texts through BENCH_TEXTS_ARGS)
# pretrain  a GPU pretraining run on .device-data/wikitext-2 (a carried copy of the data)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(build test memcheck)
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$python" -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
  nvcc --version | tail -2
} 2>&1 | tee "$out/device.txt"

for stage in "${stages[@]}"; do
  echo "== $stage ($(date +%T))"
  case "$stage" in
    build)
      PYBERT_CUDA=1 MAX_JOBS=16 "$python" setup.py build_ext --inplace > "$out/build.log" 2>&1 \
        || { tail -60 "$out/build.log"; echo "BUILD FAILED"; exit 1; }
      cp pybert/_C*.so "$out/" && echo "build ok: $(ls pybert/_C*.so)" ;;
    test)
      "$python" -m pytest -q -rs -p no:cacheprovider tests 2>&1 | tee "$out/tests.log" \
        | tail -40 ;;
    memcheck)
      compute-sanitizer --tool memcheck --error-exitcode 1 "$python" -m pytest -q -x \
        -p no:cacheprovider -m cuda tests/test_kernels.py tests/test_engine.py \
        -k "not 256 and not 300" > "$out/memcheck.log" 2>&1
      echo "memcheck exit $?"; tail -8 "$out/memcheck.log" ;;
    bench)
      "$python" benchmarks/bench_gpu.py --json "$out/bench.json" 2>&1 | tee "$out/bench.log" ;;
    texts)
      # shellcheck disable=SC2086
      "$python" benchmarks/bench_texts.py ${BENCH_TEXTS_ARGS:-} 2>&1 | tee "$out/texts.log" ;;
    pretrain)
      "$python" -m pybert pretrain --data .device-data/wikitext-2 --out "$out/pretrain" \
        --steps "${PRETRAIN_STEPS:-3000}" --eval-every 500 --save-every 500 --no-progress \
        2>&1 | tee "$out/pretrain.log" | tail -25 ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
