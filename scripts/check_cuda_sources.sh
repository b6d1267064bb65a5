#!/usr/bin/env bash
# Compile the CUDA layers (kernels, runner, the CUDA op and Engine bindings) for sm_80 and
# sm_90 through CMake with warnings as errors, so that a CUDA build break fails CI on a machine
# with nvcc but without a GPU, a CUDA torch or cuBLAS's libraries. Nothing is linked.
#
# Where the toolkit lacks cuBLAS, its headers come from the nvidia-cublas wheel (headers only,
# unzipped into build/cuda-check/).
set -euo pipefail
cd "$(dirname "$0")/.."
cuda_home=${CUDA_HOME:-/usr/local/cuda}
python=${PYTHON:-.venv/bin/python}
work=build/cuda-check
mkdir -p "$work"
export PATH="$PWD/.venv/bin:$cuda_home/bin:$PATH"

cublas_include=""
if [ ! -f "$cuda_home/include/cublasLt.h" ]; then
  if [ ! -f "$work/cublas/nvidia/cu13/include/cublasLt.h" ]; then
    "$python" -m pip download --quiet --no-deps --dest "$work/wheel" "nvidia-cublas==13.*"
    unzip -q -o "$work"/wheel/nvidia_cublas-*.whl 'nvidia/cu13/include/*' -d "$work/cublas"
  fi
  cublas_include="$PWD/$work/cublas/nvidia/cu13/include"
fi

generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
cmake -S . -B "$work/cmake" "${generator[@]}" -DPython_EXECUTABLE="$("$python" -c 'import sys; print(sys.executable)')" \
  -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" -DPYBERT_CUDA_COMPILE_ONLY=ON \
  -DPYBERT_CUDA_ARCHS="80;90" -DPYBERT_WERROR=ON -DPYBERT_CUBLAS_INCLUDE_DIR="$cublas_include" \
  > "$work/configure.log" || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/cmake" -j "${MAX_JOBS:-2}" \
  --target pybert_cuda_kernels pybert_cuda_aten_adapter pybert_cuda_runner pybert_cuda_bindings
echo "check_cuda_sources: the CUDA kernels, runner and bindings compile for sm_80 and sm_90"
