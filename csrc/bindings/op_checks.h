// The argument checks of each torch.ops.pybert op, shared by its CPU and CUDA implementations:
// every shape, dtype, device and index the kernel relies on is checked here, so that no call of
// a public op can read or write out of bounds. Index tensors are read through private host
// copies (the ops may synchronise; the Engine never does).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "kernels/activation.h"
#include "tensor_checks.h"

// Registers with `m` the implementations of every op that a device's file defines in
// namespace `ns` (ops_cpu.cpp, ops_cuda.cpp): one list, so no device can miss an op.
#define PYBERT_IMPL_OPS(m, ns)                        \
  m.impl("gemm_bias_act", &ns::gemm_bias_act);       \
  m.impl("embed_packed", &ns::embed_packed);         \
  m.impl("add_layernorm", &ns::add_layernorm);       \
  m.impl("add_residual_layernorm", &ns::add_residual_layernorm); \
  m.impl("attention_varlen", &ns::attention_varlen); \
  m.impl("rotary_qk", &ns::rotary_qk);               \
  m.impl("gated_activation", &ns::gated_activation); \
  m.impl("gather_rows", &ns::gather_rows);           \
  m.impl("unpack_padded", &ns::unpack_padded);

namespace pybert {

struct GemmArgs {
  int64_t m, n, k;
  Activation act;
};
GemmArgs check_gemm_bias_act(const at::Tensor& a, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, int64_t activation);

struct EmbedArgs {
  int64_t batch, seq_len, total_tokens, hidden;
  // Validated host copies of the index tensors.
  at::Tensor tokens, segments;
  HostSeqlens seqlens;
};
EmbedArgs check_embed_packed(const at::Tensor& tokens, const at::Tensor& segments,
                             const at::Tensor& cu_seqlens, int64_t total_tokens,
                             const at::Tensor& token_table, const at::Tensor& segment_table,
                             const at::Tensor& pos_table);

void check_add_layernorm(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                         const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         double eps);

Activation check_gated_activation(const at::Tensor& x, int64_t activation);

struct AttentionArgs {
  int64_t batch, head_dim;
  HostSeqlens seqlens;
};
AttentionArgs check_attention_varlen(const at::Tensor& qkv, const at::Tensor& cu_seqlens,
                                     int64_t max_seqlen, int64_t num_heads, int64_t window);
// The same arguments of packed QKV rows for rotary_qk, with its cos and sin tables.
AttentionArgs check_rotary_qk(const at::Tensor& qkv, const at::Tensor& cu_seqlens,
                              int64_t num_heads, const at::Tensor& cos, const at::Tensor& sin);

struct GatherArgs {
  int64_t batch, num_positions;
  HostSeqlens seqlens;
  std::optional<at::Tensor> positions;  // validated host copy
};
GatherArgs check_gather_rows(const at::Tensor& packed, const at::Tensor& cu_seqlens,
                             const std::optional<at::Tensor>& positions);

HostSeqlens check_unpack_padded(const at::Tensor& packed, const at::Tensor& cu_seqlens,
                                int64_t seq_len);

}  // namespace pybert
