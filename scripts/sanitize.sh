#!/usr/bin/env bash
# Build the CPU extension with AddressSanitizer and UndefinedBehaviorSanitizer (a copy under
# build/sanitize/, the installed package untouched) and run the kernel, input and fuzz tests
# against it, so that an out-of-bounds read or undefined behaviour fails the run even where
# the numbers happen to look right. The build has the CPU kernels' baseline code only
# (PYBERT_GENERIC_CPU: no AVX2 / AVX-512 clones), so the code a CPU without them runs is tested
# too. Extra arguments go to pytest. Needs .venv (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
out=build/sanitize
rm -rf "$out/lib/pybert"
PYBERT_CUDA=0 PYBERT_SANITIZE=1 PYBERT_GENERIC_CPU=1 PYBERT_WERROR=1 \
  "$python" setup.py --quiet build_ext --build-lib "$out/lib" --build-temp "$out/temp"
# The package's Python files (subpackages too) beside the sanitized extension.
tar -C pybert --exclude='*.so' --exclude='__pycache__' -cf - . | tar -C "$out/lib/pybert" -xf -

# Python itself is not instrumented: the sanitizer runtime must be loaded first (with the C++
# runtime, or ASan cannot intercept C++ throws from libraries loaded later), and leaks at
# interpreter exit (Python's own) are not ours to report.
asan=$("${CXX:-g++}" -print-file-name=libasan.so)
cxx_runtime=$("${CXX:-g++}" -print-file-name=libstdc++.so.6)
export LD_PRELOAD="$asan:$cxx_runtime${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH="$PWD/$out/lib${PYTHONPATH:+:$PYTHONPATH}"
lib="$PWD/$out/lib"
(cd /tmp && "$lib/../../../$python" -c "import pybert; assert pybert.__file__.startswith('$lib'), pybert.__file__
assert not pybert._C.cpu_simd_clones, 'the sanitizer build should have the baseline code only'")
exec .venv/bin/pytest -p no:cacheprovider tests/kernels tests/engine tests/adversarial "$@"
