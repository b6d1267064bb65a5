#include "tensor_checks.h"

namespace pybert {

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t dim,
                  const at::Device& device) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got an undefined one");
  TORCH_CHECK(t.layout() == at::kStrided && !t.is_nested(), name,
              " must be a dense (strided) tensor, got layout ", t.layout());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", c10::toString(dtype), ", got ",
              c10::toString(t.scalar_type()));
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.device() == device, name, " must be on ", device, ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

namespace {
constexpr const char* kActivationNames[] = {"none", "relu", "tanh", "gelu", "silu"};
constexpr int64_t kNumActivations = 5;
}  // namespace

Activation parse_activation(const std::string& name) {
  for (int64_t code = 0; code < kNumActivations; ++code) {
    if (name == kActivationNames[code]) return static_cast<Activation>(code);
  }
  TORCH_CHECK(false, "unknown activation '", name, "' (expected none, relu, tanh, gelu or silu)");
}

const char* activation_name(Activation act) {
  return kActivationNames[static_cast<int>(act)];
}

Activation activation_from_code(int64_t code) {
  TORCH_CHECK(code >= 0 && code < kNumActivations, "activation must be 0..", kNumActivations - 1,
              " (none, relu, tanh, gelu, silu), got ", code);
  return static_cast<Activation>(code);
}

int64_t HostSeqlens::length(int64_t b) const {
  const int32_t* cu = cu_seqlens.data_ptr<int32_t>();
  return int64_t(cu[b + 1]) - cu[b];
}

HostSeqlens checked_seqlens(const at::Tensor& cu_seqlens, std::optional<int64_t> total_tokens) {
  check_tensor(cu_seqlens, "cu_seqlens", at::kInt, 1, cu_seqlens.device());
  TORCH_CHECK(cu_seqlens.size(0) >= 2, "cu_seqlens must have batch + 1 >= 2 entries, got ",
              cu_seqlens.size(0));
  HostSeqlens s;
  s.cu_seqlens = cu_seqlens.to(at::kCPU, /*non_blocking=*/false, /*copy=*/true);
  s.batch = cu_seqlens.size(0) - 1;
  const int32_t* cu = s.cu_seqlens.data_ptr<int32_t>();
  TORCH_CHECK(cu[0] == 0, "cu_seqlens must start at 0, got ", cu[0]);
  s.longest = 0;
  s.shortest = INT64_MAX;
  for (int64_t b = 0; b < s.batch; ++b) {
    const int64_t length = s.length(b);
    TORCH_CHECK(length >= 0, "cu_seqlens must not decrease, got cu_seqlens[", b + 1, "] = ",
                cu[b + 1], " < cu_seqlens[", b, "] = ", cu[b]);
    s.longest = std::max(s.longest, length);
    s.shortest = std::min(s.shortest, length);
  }
  s.total_tokens = cu[s.batch];
  if (total_tokens.has_value()) {
    TORCH_CHECK(s.total_tokens == *total_tokens, "cu_seqlens[-1] = ", s.total_tokens,
                " must equal the number of packed rows, ", *total_tokens);
  }
  return s;
}

at::Tensor checked_ids(const at::Tensor& ids, int64_t upper, const char* name) {
  at::Tensor host = ids.to(at::kCPU, /*non_blocking=*/false, /*copy=*/true);
  if (host.numel() == 0) return host;
  const int64_t low = host.min().item<int64_t>(), high = host.max().item<int64_t>();
  TORCH_CHECK(low >= 0 && high < upper, name, " out of range: ids must be in [0, ", upper,
              "), found ", low < 0 ? low : high);
  return host;
}

}  // namespace pybert
