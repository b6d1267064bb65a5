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

void parallel_for(int64_t n, int64_t grain_size,
                  const std::function<void(int64_t, int64_t)>& fn) {
  at::parallel_for(0, n, grain_size, fn);
}

}  // namespace pybert::cpu
