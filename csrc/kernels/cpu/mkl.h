// MKL's single-precision GEMMs that ATen does not expose: many small products in one call
// (cblas_sgemm_batch), and products with a weight packed once in MKL's internal layout
// (cblas_sgemm_pack / cblas_sgemm_compute). torch's x86-64 wheels link MKL in and export these;
// they are reached through weak symbols, so under a torch without MKL (other CPUs, other
// builds) they are absent, the *_available() functions say false, and callers take another
// path. A symbol of the same name from another BLAS does not count: MKL's own version
// function must be there too.
#pragma once

#include <cstddef>
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

// A weight matrix (n, k) packed for products out = a weight^T with any number of rows: the
// packed form depends on n and k only (MKL sizes it the same for every row count, and
// products of 1 to 3,000 rows matched plain ones when measured; the tests check the engine's
// use, 1 to 256 rows).
bool packed_sgemm_available();
// The packed weight's size, or 0 where MKL sizes it differently for different row counts (a
// packed form that would depend on them: the weight is then left plain).
size_t packed_sgemm_bytes(int64_t n, int64_t k);
// dest: packed_sgemm_bytes(n, k) bytes that must not move afterwards (MKL's rule).
void pack_sgemm_weight(const float* weight, int64_t n, int64_t k, void* dest);
// out (m, n) = a (m, k) weight^T + beta * out, on MKL's threads.
void packed_sgemm(const float* a, const void* packed_weight, float* out, int64_t m, int64_t n,
                  int64_t k, float beta);

}  // namespace pybert::cpu
