// CPU kernels: pure compute on raw pointers and sizes. No torch, no BERT.
//
// Each kernel is the readable reference for its CUDA twin in ../cuda/ (same arguments, same
// layouts). Matrices are row-major. "Packed" activations hold only the real tokens of a batch,
// sequence after sequence: sequence b owns rows [cu_seqlens[b], cu_seqlens[b + 1]).
#pragma once

#include <cstdint>

#include "../activation.h"

namespace pybert::cpu {

// out[m, n] = act(sum_k a[m, k] * weight[n, k] + bias[n])
// a: (m, k); weight: (n, k), the nn.Linear layout; bias: (n) or null; out: (m, n).
void gemm_bias_act(const float* a, const float* weight, const float* bias, float* out,
                   int64_t m, int64_t n, int64_t k, Activation act);

// Strided products for the kernels that work on slices (attention's heads):
// matmul_nt: c[i, j] = alpha * sum_k a[i, k] * b[j, k]
// matmul_nn: c[i, j] = sum_k a[i, k] * b[k, j]
// a: (m, k) or (m, k), b: (n, k) or (k, n), c: (m, n); each row-major with the given row
// stride (lda, ldb, ldc elements between rows).
void matmul_nt(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
               int64_t m, int64_t n, int64_t k, float alpha);
void matmul_nn(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
               int64_t m, int64_t n, int64_t k);

// Token + segment + position embeddings of the real tokens, packed.
// tokens, segments: (batch, seq_len) padded, or already packed (total_tokens) when
// seq_len == 0; cu_seqlens: (batch + 1);
// token_table: (vocab_size, hidden); segment_table: (2, hidden); pos_table: (>= seq_len, hidden);
// out: (total_tokens, hidden); row cu_seqlens[b] + s holds position s of sequence b, and rows
// from cu_seqlens[batch] to total_tokens (spare capacity, as in a captured CUDA graph) are
// zeros.
void embed_packed(const int64_t* tokens, const int64_t* segments, const int32_t* cu_seqlens,
                  const float* token_table, const float* segment_table, const float* pos_table,
                  float* out, int64_t batch, int64_t seq_len, int64_t total_tokens,
                  int64_t hidden);

// out[r] = LayerNorm(x[r] + residual[r]) * gamma + beta over rows of width `hidden`.
// residual may be null (plain LayerNorm). out may alias x or residual.
void add_layernorm(const float* x, const float* residual, const float* gamma, const float* beta,
                   float* out, int64_t rows, int64_t hidden, float eps);

// Multi-head self-attention over packed sequences, keys limited to each sequence's tokens.
// qkv: (total_tokens, 3 * hidden), columns [Q | K | V], head h owns columns [h*d, (h+1)*d) of
// each third, d = hidden / num_heads; out: (total_tokens, hidden), heads side by side.
// out[t, head h] = softmax_j(q_t . k_j / sqrt(d)) v_j over the keys j of t's sequence.
void attention_varlen(const float* qkv, const int32_t* cu_seqlens, float* out, int64_t batch,
                      int64_t max_seqlen, int64_t num_heads, int64_t head_dim);

// out[b * num_positions + p] = packed[cu_seqlens[b] + positions[b, p]] (rows of width hidden).
// positions: (batch, num_positions), each in [0, length of sequence b); null means position 0
// of every sequence (the <cls> rows) with num_positions = 1.
void gather_rows(const float* packed, const int32_t* cu_seqlens, const int64_t* positions,
                 float* out, int64_t batch, int64_t num_positions, int64_t hidden);

// Restore the padded layout: out (batch, seq_len, hidden) gets the packed rows of each
// sequence and zeros at its padded positions.
void unpack_padded(const float* packed, const int32_t* cu_seqlens, float* out, int64_t batch,
                   int64_t seq_len, int64_t hidden);

}  // namespace pybert::cpu
