#include "sgemm_batch.h"

#include <stdexcept>

// MKL's declaration (mkl_cblas.h, LP64: MKL_INT is int; the enums are CBLAS's values). Weak:
// resolved when the process has MKL (torch's libtorch_cpu exports it), null otherwise.
extern "C" void cblas_sgemm_batch(int layout, const int* transa, const int* transb, const int* m,
                                  const int* n, const int* k, const float* alpha,
                                  const float** a, const int* lda, const float** b,
                                  const int* ldb, const float* beta, float** c, const int* ldc,
                                  int group_count, const int* group_size)
    __attribute__((weak));

namespace pybert::cpu {
namespace {
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS_LAYOUT, CBLAS_TRANSPOSE
}  // namespace

bool SgemmBatch::available() { return cblas_sgemm_batch != nullptr; }

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

}  // namespace pybert::cpu
