#!/usr/bin/env bash
# GPU work for one device call (10 minutes at most a call): run the stages named, in order.
#   bash benchmarks/gpu_session.sh [build] [cudatest] [test] [memcheck] [kernels] [bench]
#                                  [modern] [texts] [pretrain]
# Default: build test memcheck. Logs go to $OUT (or ./gpu-out). Each stage is cut off after
# STAGE_TIMEOUT seconds (default 300), so one hung stage cannot eat the whole call.
#
# build     builds pybert._C in place for sm_90 against the machine's CUDA torch
#           (pybert/_C*.so; it is copied to $OUT: `carry` it back into pybert/ to skip the build
#           in a later call)
# cudatest  the cuda-marked tests alone, 8 processes (pytest-xdist)
# test      the whole suite (cuda-marked tests included) against the checkout (PYTHONPATH=.)
# memcheck  the CUDA tests once under compute-sanitizer (largest shapes skipped: ~100x slower)
# kernels   benchmarks/bench_kernels.py: each op against its peers, one forward's breakdown
# bench     benchmarks/bench_gpu.py (torch.compile's max-autotune alone takes minutes; pass
#           e.g. --peers through BENCH_GPU_ARGS)
# modern    benchmarks/bench_modern.py --device cuda: ModernBERT-base's shape in bf16 against
#           transformers (SDPA) at 32 x 512 and 4 x 8,192 (issue 26's GPU target)
# texts     benchmarks/bench_texts.py (pass --texts through BENCH_TEXTS_ARGS)
# pretrain  a GPU pretraining run on .device-data/wikitext-2 (a carried copy of the data)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
python=${PYTHON:-python3}
limit=${STAGE_TIMEOUT:-300}
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
      PYBERT_CUDA=1 PYBERT_CUDA_ARCHS=${PYBERT_CUDA_ARCHS:-90} MAX_JOBS=16 \
        "$python" setup.py build_ext --inplace > "$out/build.log" 2>&1 \
        || { tail -60 "$out/build.log"; echo "BUILD FAILED"; exit 1; }
      cp pybert/_C*.so "$out/" && echo "build ok: $(ls pybert/_C*.so)" ;;
    cudatest)
      timeout "$limit" "$python" -m pytest -q -rfEs -p no:cacheprovider -n 8 -m cuda tests 2>&1 \
        | tee "$out/cudatest.log" | tail -40 ;;
    test)
      timeout "$limit" "$python" -m pytest -q -rs -p no:cacheprovider tests 2>&1 | tee "$out/tests.log" \
        | tail -40 ;;
    memcheck)
      # shellcheck disable=SC2086
      timeout "$limit" compute-sanitizer --tool memcheck --error-exitcode 1 "$python" -m pytest -q -x \
        -p no:cacheprovider -m cuda ${MEMCHECK_TESTS:-tests/kernels tests/engine} \
        -k "${MEMCHECK_FILTER:-not 256 and not 300}" > "$out/memcheck.log" 2>&1
      echo "memcheck exit $?"; tail -8 "$out/memcheck.log" ;;
    kernels)
      timeout "$limit" "$python" benchmarks/bench_kernels.py --json "$out/kernels.json" 2>&1 \
        | tee "$out/kernels.log"
      timeout "$limit" "$python" benchmarks/bench_kernels.py --dtype float32 \
        --sections attention,layernorm 2>&1 | tee "$out/kernels-fp32.log" ;;
    bench)
      # shellcheck disable=SC2086
      timeout "$limit" "$python" benchmarks/bench_gpu.py --json "$out/bench.json" \
        ${BENCH_GPU_ARGS:-} 2>&1 | tee "$out/bench.log" ;;
    modern)
      timeout "$limit" "$python" benchmarks/bench_modern.py --device cuda --repeats 5 \
        --workloads 32x512,4x8192 2>&1 | tee "$out/modern.log" ;;
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
