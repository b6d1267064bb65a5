// What the CPU's ATen adapter shares (csrc/kernels/cpu/aten/: the only CPU code that sees
// torch): tensors over memory the kernels own, in the kernels' T.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>

#include <type_traits>

#include "../kernels.h"

namespace pybert::cpu {

static_assert(sizeof(bfloat16) == sizeof(c10::BFloat16) &&
                  alignof(bfloat16) == alignof(c10::BFloat16),
              "bfloat16 must have c10::BFloat16's layout");

template <typename T>
at::TensorOptions options_of() {
  return at::TensorOptions().dtype(std::is_same_v<T, bfloat16> ? at::kBFloat16 : at::kFloat);
}

// A tensor over memory the caller owns (const: ATen only reads it).
template <typename T>
at::Tensor wrap(const T* data, at::IntArrayRef sizes) {
  return at::from_blob(const_cast<T*>(data), sizes, options_of<T>());
}

// out = act(in) by torch's vectorised kernels; `in` may be `out` (in place). (gemm.cpp)
void apply_activation(at::Tensor& out, const at::Tensor& in, Activation act);

// A prepared weight's path for m rows (gemm.cpp; what time_gemm checks it got).
GemmPath prepared_path(const PreparedWeight& prepared, int64_t m);

}  // namespace pybert::cpu
