// The BERT the runner executes: its sizes and one batch's inputs and outputs (the weights are
// in weights.h). Plain structs of raw pointers; the bindings own the memory behind them.
#pragma once

#include <cstdint>
#include <functional>

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
                                  // of a CUDA-graph bucket: rows computed on, never returned)
  int64_t max_seqlen;             // the longest valid length
  int64_t num_pred_positions;
  bool with_nsp;
  // Asked between layers; true abandons the forward (its outputs are then undefined). The CPU
  // engine sets it so that Ctrl-C need not wait for a long batch; empty: never asked.
  std::function<bool()> stop_requested;
};

template <typename T>
struct BatchOutputs {
  T* encoded;         // (batch, seq_len, H); zeros at padded positions; or null
  T* encoded_packed;  // (total_tokens, H), the real tokens only; or null
  T* mlm_logits;  // (batch, num_pred_positions, V), written when pred_positions is set
  T* nsp_logits;  // (batch, 2), written when with_nsp
};

}  // namespace pybert
