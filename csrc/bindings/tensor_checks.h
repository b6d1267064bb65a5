// Tensor checks shared by every binding (the ops on each device and the Engine): each failure is
// a c10::Error (RuntimeError in Python) whose message names the argument and what was expected.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>

#include "kernels/activation.h"

namespace pybert {

// t is a dense, contiguous tensor of `dtype` with `dim` dimensions on `device`.
void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t dim,
                  const at::Device& device);

// The activation named `name` ("none", "relu", "tanh", "gelu"); the names are those of
// activation.h, in the order of its codes.
Activation parse_activation(const std::string& name);
const char* activation_name(Activation act);
// The activation of a torch op's int argument, 0..3 as in activation.h.
Activation activation_from_code(int64_t code);

// cu_seqlens (int32, batch + 1 prefix sums) read on the host: a private copy, so that what was
// checked is what is used.
struct HostSeqlens {
  at::Tensor cu_seqlens;  // int32 on the CPU, contiguous
  int64_t batch;
  int64_t longest;        // the longest sequence
  int64_t shortest;
  int64_t total_tokens;   // cu_seqlens[batch]

  int64_t length(int64_t b) const;
};

// Checks cu_seqlens: int32, one dimension, at least two entries, starting at 0, never
// decreasing, and ending at `total_tokens` when that is given.
HostSeqlens checked_seqlens(const at::Tensor& cu_seqlens,
                            std::optional<int64_t> total_tokens = std::nullopt);

// ids (int64) all in [0, upper); a private host copy of them.
at::Tensor checked_ids(const at::Tensor& ids, int64_t upper, const char* name);

template <typename T>
T* ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

template <typename T>
const T* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? reinterpret_cast<const T*>(t->data_ptr()) : nullptr;
}

}  // namespace pybert
