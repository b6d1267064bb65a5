#!/usr/bin/env bash
# Compile every CUDA source under csrc/ to object code for sm_80 and sm_90 with nvcc, so that a
# CUDA build break fails CI on a machine without a GPU. CUDA kernels see no torch, so they need
# only the CUDA toolkit (and cuBLAS headers, from the nvidia-cublas wheel when the toolkit lacks
# them).
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
mapfile -t sources < <(find csrc -name '*.cu' | sort)
if [ ${#sources[@]} -eq 0 ]; then
  echo "check_cuda_sources: no CUDA sources under csrc/"
  exit 0
fi
includes=(-Icsrc)
cublas_include=$(.venv/bin/python - 2>/dev/null <<'PY' || true
import importlib.util, pathlib
spec = importlib.util.find_spec("nvidia")
for root in (spec.submodule_search_locations if spec else []):
    for header in pathlib.Path(root).rglob("cublasLt.h"):
        print(header.parent)
        raise SystemExit
PY
)
[ -n "$cublas_include" ] && includes+=("-I$cublas_include")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for src in "${sources[@]}"; do
  echo "nvcc: $src"
  "$nvcc" -std=c++17 -O2 --expt-relaxed-constexpr "${includes[@]}" \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -Werror all-warnings -c "$src" -o "$out/$(basename "$src").o"
done
echo "check_cuda_sources: ${#sources[@]} file(s) compiled for sm_80 and sm_90"
