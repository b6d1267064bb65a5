// The one CPU kernel file that sees torch: the GEMM goes to ATen (MKL/oneDNN/OpenBLAS, whatever
// torch was built with) and parallel_for goes to torch's thread pool. Everything else in
// kernels/cpu is plain C++.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "kernels.h"
#include "parallel.h"

namespace pybert::cpu {

void gemm_bias_act(const float* a, const float* weight, const float* bias, float* out,
                   int64_t m, int64_t n, int64_t k, Activation act) {
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  auto a_t = at::from_blob(const_cast<float*>(a), {m, k}, opts);
  auto w_t = at::from_blob(const_cast<float*>(weight), {n, k}, opts);
  auto out_t = at::from_blob(out, {m, n}, opts);
  if (bias != nullptr) {
    auto bias_t = at::from_blob(const_cast<float*>(bias), {n}, opts);
    at::addmm_out(out_t, bias_t, a_t, w_t.t());
  } else {
    at::mm_out(out_t, a_t, w_t.t());
  }
  switch (act) {
    case Activation::kNone: break;
    case Activation::kReLU: out_t.relu_(); break;
    case Activation::kTanh: out_t.tanh_(); break;
    case Activation::kGELU: out_t.copy_(at::gelu(out_t)); break;
  }
}

void matmul_nt(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
               int64_t m, int64_t n, int64_t k, float alpha) {
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  auto a_t = at::from_blob(const_cast<float*>(a), {m, k}, {lda, 1}, opts);
  auto b_t = at::from_blob(const_cast<float*>(b), {n, k}, {ldb, 1}, opts);
  auto c_t = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  at::mm_out(c_t, a_t, b_t.t());
  if (alpha != 1.0f) c_t.mul_(alpha);
}

void matmul_nn(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
               int64_t m, int64_t n, int64_t k) {
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  auto a_t = at::from_blob(const_cast<float*>(a), {m, k}, {lda, 1}, opts);
  auto b_t = at::from_blob(const_cast<float*>(b), {k, n}, {ldb, 1}, opts);
  auto c_t = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  at::mm_out(c_t, a_t, b_t);
}

void parallel_for(int64_t n, int64_t grain_size,
                  const std::function<void(int64_t, int64_t)>& fn) {
  at::parallel_for(0, n, grain_size, fn);
}

}  // namespace pybert::cpu
