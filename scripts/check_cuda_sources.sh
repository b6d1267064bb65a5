#!/usr/bin/env bash
# Compile every CUDA source under csrc/ to object code for sm_80 and sm_90 with nvcc, and
# compile the CUDA half of the bindings (-fsyntax-only: the CPU torch here cannot link it), so
# that a CUDA build break fails CI on a machine without a GPU.
#
# The CUDA kernels see no torch: they need the CUDA toolkit and cuBLAS's headers. Where the
# toolkit lacks cuBLAS, its headers come from the nvidia-cublas wheel (headers only, unzipped
# into build/cuda-check/).
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
cuda_home=${CUDA_HOME:-/usr/local/cuda}
python=${PYTHON:-.venv/bin/python}
work=build/cuda-check
mkdir -p "$work"

includes=(-Icsrc)
if [ ! -f "$cuda_home/include/cublasLt.h" ]; then
  if [ ! -f "$work/cublas/nvidia/cu13/include/cublasLt.h" ]; then
    "$python" -m pip download --quiet --no-deps --dest "$work/wheel" "nvidia-cublas==13.*"
    unzip -q -o "$work"/wheel/nvidia_cublas-*.whl 'nvidia/cu13/include/*' -d "$work/cublas"
  fi
  includes+=("-I$PWD/$work/cublas/nvidia/cu13/include")
fi

mapfile -t sources < <(find csrc -name '*.cu' | sort)
for src in "${sources[@]}"; do
  echo "nvcc: $src"
  "$nvcc" -std=c++17 -O2 --expt-relaxed-constexpr "${includes[@]}" \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -Werror all-warnings -c "$src" -o "$work/$(basename "$src").o"
done
echo "check_cuda_sources: ${#sources[@]} CUDA file(s) compiled for sm_80 and sm_90"

# The bindings with PYBERT_WITH_CUDA. The CPU wheel of torch ships the c10/cuda headers but not
# the one its CMake generates for CUDA builds; a stand-in lets the rest be compiled.
mkdir -p "$work/stub/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' \
  > "$work/stub/c10/cuda/impl/cuda_cmake_macros.h"
mapfile -t torch_includes < <("$python" - <<'PY'
import sysconfig
from torch.utils.cpp_extension import include_paths
for path in include_paths() + [sysconfig.get_paths()["include"]]:
    print("-isystem" + path)
PY
)
echo "g++ -fsyntax-only -DPYBERT_WITH_CUDA: csrc/bindings.cpp"
"${CXX:-g++}" -std=c++17 -fsyntax-only -Wall -Wextra -Wno-unused-parameter -Werror \
  -DPYBERT_WITH_CUDA -DTORCH_EXTENSION_NAME=_C "${torch_includes[@]}" \
  "-isystem$PWD/$work/stub" "-isystem$cuda_home/include" "${includes[@]}" csrc/bindings.cpp
echo "check_cuda_sources: the CUDA bindings compile"
