// The CPU backend of the runner: the fp32 kernels of kernels/cpu. They run synchronously on
// torch's thread pool, so the backend holds no state.
#pragma once

#include "../kernels/cpu/kernels.h"
#include "model.h"

namespace pybert {

struct CpuBackend {
  using Scalar = float;

  void gemm_bias_act(const float* a, const float* w, const float* bias, float* out, int64_t m,
                     int64_t n, int64_t k, Activation act) {
    cpu::gemm_bias_act(a, w, bias, out, m, n, k, act);
  }
  void embed_packed(const int64_t* tokens, const int64_t* segments, const int32_t* cu_seqlens,
                    const float* token_table, const float* segment_table,
                    const float* pos_table, float* out, int64_t batch, int64_t seq_len,
                    int64_t total_tokens, int64_t hidden) {
    cpu::embed_packed(tokens, segments, cu_seqlens, token_table, segment_table, pos_table, out,
                      batch, seq_len, total_tokens, hidden);
  }
  void add_layernorm(const float* x, const float* residual, const float* gamma,
                     const float* beta, float* out, int64_t rows, int64_t hidden, float eps) {
    cpu::add_layernorm(x, residual, gamma, beta, out, rows, hidden, eps);
  }
  void attention_varlen(const float* qkv, const int32_t* cu_seqlens, float* out, int64_t batch,
                        int64_t max_seqlen, int64_t num_heads, int64_t head_dim) {
    cpu::attention_varlen(qkv, cu_seqlens, out, batch, max_seqlen, num_heads, head_dim);
  }
  void gather_rows(const float* packed, const int32_t* cu_seqlens, const int64_t* positions,
                   float* out, int64_t batch, int64_t num_positions, int64_t hidden) {
    cpu::gather_rows(packed, cu_seqlens, positions, out, batch, num_positions, hidden);
  }
  void unpack_padded(const float* packed, const int32_t* cu_seqlens, float* out, int64_t batch,
                     int64_t seq_len, int64_t hidden) {
    cpu::unpack_padded(packed, cu_seqlens, out, batch, seq_len, hidden);
  }
};

}  // namespace pybert
