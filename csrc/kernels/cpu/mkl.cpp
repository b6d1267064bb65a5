#include "mkl.h"

#include <stdexcept>

// MKL's declarations (mkl_cblas.h, LP64: MKL_INT is int; the enums are CBLAS's values). Weak:
// resolved when the process has MKL (torch's libtorch_cpu exports them), null otherwise.
extern "C" {
void cblas_sgemm_batch(int layout, const int* transa, const int* transb, const int* m,
                       const int* n, const int* k, const float* alpha, const float** a,
                       const int* lda, const float** b, const int* ldb, const float* beta,
                       float** c, const int* ldc, int group_count, const int* group_size)
    __attribute__((weak));
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k,
                         const float* a, int lda, const float* b, int ldb, float beta, float* c,
                         int ldc) __attribute__((weak));
// Only looked up, never called: that the cblas_* symbols above are MKL's. Another BLAS may
// export a function of the same name and another contract: OpenBLAS 0.3.30, in torch 2.9's
// aarch64 wheels, exports cblas_sgemm_batch, and called as MKL's it crashed (under qemu).
void MKL_Get_Version_String(char* buffer, int length) __attribute__((weak));
}

namespace pybert::cpu {
namespace {
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS_LAYOUT, CBLAS_TRANSPOSE
constexpr int kPacked = 151, kBMatrix = 162;                   // CBLAS_STORAGE, CBLAS_IDENTIFIER
// The row count MKL is told when packing: it does not change the packed form (see mkl.h).
constexpr int kNominalRows = 128;

bool process_has_mkl() { return MKL_Get_Version_String != nullptr; }
}  // namespace

bool SgemmBatch::available() { return process_has_mkl() && cblas_sgemm_batch != nullptr; }

void SgemmBatch::clear() {
  for (auto* v : {&transpose_a_, &transpose_b_, &m_, &n_, &k_, &lda_, &ldb_, &ldc_,
                  &group_size_}) {
    v->clear();
  }
  alpha_.clear();
  beta_.clear();
  a_.clear();
  b_.clear();
  c_.clear();
}

void SgemmBatch::begin_group(int64_t m, int64_t n, int64_t k, bool transpose_b, float alpha,
                             int64_t lda, int64_t ldb, int64_t ldc) {
  transpose_a_.push_back(kNoTrans);
  transpose_b_.push_back(transpose_b ? kTrans : kNoTrans);
  m_.push_back(int(m));
  n_.push_back(int(n));
  k_.push_back(int(k));
  lda_.push_back(int(lda));
  ldb_.push_back(int(ldb));
  ldc_.push_back(int(ldc));
  alpha_.push_back(alpha);
  beta_.push_back(0.0f);
  group_size_.push_back(0);
}

void SgemmBatch::add(const float* a, const float* b, float* c) {
  a_.push_back(a);
  b_.push_back(b);
  c_.push_back(c);
  ++group_size_.back();
}

void SgemmBatch::run() {
  if (a_.empty()) return;
  if (!available()) throw std::logic_error("SgemmBatch::run without MKL's cblas_sgemm_batch");
  cblas_sgemm_batch(kRowMajor, transpose_a_.data(), transpose_b_.data(), m_.data(), n_.data(),
                    k_.data(), alpha_.data(), a_.data(), lda_.data(), b_.data(), ldb_.data(),
                    beta_.data(), c_.data(), ldc_.data(), int(group_size_.size()),
                    group_size_.data());
}

bool packed_sgemm_available() {
  return process_has_mkl() && cblas_sgemm_pack_get_size != nullptr &&
         cblas_sgemm_pack != nullptr && cblas_sgemm_compute != nullptr;
}

size_t packed_sgemm_bytes(int64_t n, int64_t k) {
  const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, kNominalRows, int(n), int(k));
  for (const int rows : {1, 4096}) {
    if (cblas_sgemm_pack_get_size(kBMatrix, rows, int(n), int(k)) != bytes) return 0;
  }
  return bytes;
}

void pack_sgemm_weight(const float* weight, int64_t n, int64_t k, void* dest) {
  // B = weight^T (k, n): the row-major weight read transposed.
  cblas_sgemm_pack(kRowMajor, kBMatrix, kTrans, kNominalRows, int(n), int(k), 1.0f, weight,
                   int(k), static_cast<float*>(dest));
}

void packed_sgemm(const float* a, const void* packed_weight, float* out, int64_t m, int64_t n,
                  int64_t k, float beta) {
  if (m == 0) return;
  cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, int(m), int(n), int(k), a, int(k),
                      static_cast<const float*>(packed_weight), int(n), beta, out, int(n));
}

}  // namespace pybert::cpu
