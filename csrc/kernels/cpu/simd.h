// The hot loops of the plain C++ kernels are compiled for AVX-512 and AVX2 beside the
// baseline, the best chosen when the library loads (GCC's function multiversioning on
// x86-64 Linux); reductions are marked `#pragma omp simd` (-fopenmp-simd: no OpenMP runtime)
// so that the compiler may vectorise them without -ffast-math. PYBERT_GENERIC_CPU (the CMake
// option, set by scripts/sanitize.sh) compiles the baseline only: the code a CPU without AVX2
// runs, tested on one that has it.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(PYBERT_GENERIC_CPU)
#define PYBERT_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define PYBERT_HAS_SIMD_CLONES 1
#else
#define PYBERT_SIMD_CLONES
#define PYBERT_HAS_SIMD_CLONES 0
#endif
