// The CPU backend of the runner: the kernels of kernels/cpu in float or bfloat16. They run
// synchronously on torch's thread pool; the backend's one state is the engine's prepared
// (prepacked or int8) weight matrices, found by the address of the plain matrix.
#pragma once

#include <map>
#include <unordered_map>
#include <utility>

#include "../kernels/cpu/kernels.h"
#include "model.h"

namespace pybert {

using PreparedWeights = std::unordered_map<const void*, cpu::PreparedWeightPtr>;

// What pybert.engine.cpu_plan measured on this machine: each GEMM weight shape's paths by row
// count (keyed by (n, k); a shape not listed gets the default), the float attention's kernel
// and the longest sequence it takes (longer ones: torch's flash attention).
struct CpuPlan {
  std::map<std::pair<int64_t, int64_t>, cpu::GemmChoice> gemm;
  cpu::AttentionPath attention_kernel = cpu::AttentionPath::kMkl;
  int64_t attention_max_length = cpu::kAttentionKernelMaxLength;
};

template <typename T>
struct CpuBackend {
  using Scalar = T;
  const PreparedWeights* prepared = nullptr;
  cpu::AttentionPath attention_kernel = cpu::AttentionPath::kMkl;
  int64_t attention_max_length = cpu::kAttentionKernelMaxLength;

  void gemm_bias_act(const T* a, const T* w, const T* bias, T* out, int64_t m, int64_t n,
                     int64_t k, Activation act) {
    const cpu::PreparedWeight* ready = nullptr;
    if (prepared != nullptr) {
      auto found = prepared->find(w);
      if (found != prepared->end()) ready = found->second.get();
    }
    cpu::gemm_bias_act(a, w, bias, ready, out, m, n, k, act);
  }
  void embed_packed(const PackedIds& ids, const EmbeddingTables<T>& tables, T* out) {
    cpu::embed_packed(ids, tables, out);
  }
  void add_layernorm(const T* x, const T* residual, const T* gamma, const T* beta, T* out,
                     int64_t rows, int64_t hidden, float eps) {
    cpu::add_layernorm(x, residual, gamma, beta, out, rows, hidden, eps);
  }
  void add_residual_layernorm(const T* delta, T* x, const T* gamma, const T* beta, T* normed,
                              int64_t rows, int64_t hidden, float eps) {
    cpu::add_residual_layernorm(delta, x, gamma, beta, normed, rows, hidden, eps);
  }
  void rotary_qk(T* qkv, const int32_t* cu_seqlens, int64_t batch, int64_t total_tokens,
                 int64_t num_heads, int64_t head_dim, const T* cos, const T* sin) {
    cpu::rotary_qk(qkv, cu_seqlens, batch, num_heads, head_dim, cos, sin);
  }
  void gated_activation(const T* in, T* out, int64_t rows, int64_t width, Activation act) {
    cpu::gated_activation(in, out, rows, width, act);
  }
  const T* attention_varlen(const T* qkv, const int32_t* cu_seqlens, T* out, int64_t batch,
                            int64_t total_tokens, int64_t max_seqlen, int64_t num_heads,
                            int64_t head_dim, int64_t window) {
    cpu::attention_varlen(qkv, cu_seqlens, out, batch, max_seqlen, num_heads, head_dim, window,
                          attention_kernel, attention_max_length);
    return out;
  }
  void gather_rows(const T* packed, const int32_t* cu_seqlens, const int64_t* positions,
                   T* out, int64_t batch, int64_t num_positions, int64_t hidden) {
    cpu::gather_rows(packed, cu_seqlens, positions, out, batch, num_positions, hidden);
  }
  void unpack_padded(const T* packed, const int32_t* cu_seqlens, T* out, int64_t batch,
                     int64_t seq_len, int64_t hidden) {
    cpu::unpack_padded(packed, cu_seqlens, out, batch, seq_len, hidden);
  }
};

}  // namespace pybert
