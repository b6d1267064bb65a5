// Many small single-precision GEMMs in one call to MKL's cblas_sgemm_batch, the BLAS that
// torch's x86-64 wheels link in and export. It is reached through a weak symbol: under a torch
// without MKL (other CPUs, other builds) the symbol is absent, available() is false, and
// callers take another path.
#pragma once

#include <cstdint>
#include <vector>

namespace pybert::cpu {

class SgemmBatch {
 public:
  static bool available();

  // Forgets every product added so far (keeps the memory).
  void clear();
  // Opens a group of products C = alpha * A op(B): A (m, k), B (k, n) or, with transpose_b,
  // (n, k); row-major, rows lda, ldb, ldc elements apart. add() then adds one product of it.
  void begin_group(int64_t m, int64_t n, int64_t k, bool transpose_b, float alpha, int64_t lda,
                   int64_t ldb, int64_t ldc);
  void add(const float* a, const float* b, float* c);
  bool empty() const { return a_.empty(); }
  // Computes every product added since clear(), one MKL call (single-threaded when called
  // from a parallel region, as attention.cpp does).
  void run();

 private:
  // One entry per group (MKL's LP64 interface: 32-bit integers), one per product.
  std::vector<int> transpose_a_, transpose_b_, m_, n_, k_, lda_, ldb_, ldc_, group_size_;
  std::vector<float> alpha_, beta_;
  std::vector<const float*> a_, b_;
  std::vector<float*> c_;
};

}  // namespace pybert::cpu
