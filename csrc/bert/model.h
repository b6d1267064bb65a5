// The BERT the runner executes: its sizes, its packed weights and one batch's inputs/outputs.
// Plain structs of raw pointers; the bindings own the memory behind them.
#pragma once

#include <cstdint>
#include <vector>

#include "../kernels/activation.h"

namespace pybert {

struct BertConfig {
  int64_t vocab_size = 0;
  int64_t num_hiddens = 0;
  int64_t num_heads = 0;
  int64_t ffn_num_hiddens = 0;
  int64_t num_layers = 0;
  int64_t max_len = 0;
  float layer_norm_eps = 1e-5f;
  Activation ffn_activation = Activation::kReLU;  // ReLU (d2l) or exact GELU (Hugging Face)
  Activation mlm_activation = Activation::kReLU;  // the MLM transform's, likewise

  int64_t head_dim() const { return num_hiddens / num_heads; }
};

// One post-LN encoder block. Every matrix is in nn.Linear layout (out_features, in_features).
// qkv_weight is W_q, W_k, W_v stacked: (3 * H, H), so one GEMM yields [Q | K | V].
template <typename T>
struct BertLayerWeights {
  const T* qkv_weight;  // (3H, H)
  const T* qkv_bias;    // (3H)
  const T* out_weight;  // (H, H)
  const T* out_bias;    // (H)
  const T* ln1_weight;  // (H)
  const T* ln1_bias;    // (H)
  const T* ffn1_weight; // (F, H)
  const T* ffn1_bias;   // (F)
  const T* ffn2_weight; // (H, F)
  const T* ffn2_bias;   // (H)
  const T* ln2_weight;  // (H)
  const T* ln2_bias;    // (H)
};

// Optional parts are null when a checkpoint lacks them: the embedding LayerNorm (d2l has none,
// Hugging Face BERT has one), the NSP head with its pooler, the MLM head.
template <typename T>
struct BertWeights {
  const T* token_embedding;    // (V, H)
  const T* segment_embedding;  // (2, H)
  const T* pos_embedding;      // (max_len, H)
  const T* embedding_ln_weight;  // (H) or null
  const T* embedding_ln_bias;    // (H) or null
  std::vector<BertLayerWeights<T>> layers;
  const T* pooler_weight;      // (H, H)   NSP: tanh(pooler(x_cls))
  const T* pooler_bias;        // (H)
  const T* nsp_weight;         // (2, H)
  const T* nsp_bias;           // (2)
  const T* mlm_dense_weight;   // (H, H)   MLM: decoder(LN(act(dense(x))))
  const T* mlm_dense_bias;     // (H)
  const T* mlm_ln_weight;      // (H)
  const T* mlm_ln_bias;        // (H)
  const T* mlm_decoder_weight; // (V, H)
  const T* mlm_decoder_bias;   // (V)
};

// One batch, already validated by the caller: ids in range, 1 <= length <= seq_len <= max_len,
// pred_positions inside each sequence's real tokens.
struct BatchInputs {
  const int64_t* tokens;          // (batch, seq_len) padded, or (total_tokens) if seq_len == 0
  const int64_t* segments;        // the same layout, 0 or 1
  const int32_t* cu_seqlens;      // (batch + 1), prefix sums of the valid lengths
  const int64_t* pred_positions;  // (batch, num_pred_positions) or null: no MLM head
  int64_t batch;
  int64_t seq_len;                // 0: tokens and segments are packed
  int64_t total_tokens;           // rows computed: cu_seqlens[batch], or more (spare capacity
                                  // of a CUDA-graph bucket, computed on zero rows)
  int64_t max_seqlen;             // the longest valid length
  int64_t num_pred_positions;
  bool with_nsp;
};

template <typename T>
struct BatchOutputs {
  T* encoded;         // (batch, seq_len, H); zeros at padded positions; or null
  T* encoded_packed;  // (total_tokens, H), the real tokens only; or null
  T* mlm_logits;  // (batch, num_pred_positions, V), written when pred_positions is set
  T* nsp_logits;  // (batch, 2), written when with_nsp
};

}  // namespace pybert
