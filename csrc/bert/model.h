// The BERT the runner executes: its sizes and one batch's inputs and outputs (the weights are
// in weights.h). Plain structs of raw pointers; the bindings own the memory behind them.
#pragma once

#include <cstdint>
#include <functional>

#include "../kernels/activation.h"

namespace pybert {

// The config's fields, written once: X(type, name, default). From this list come BertConfig's
// members, the bindings' reading of a config dict (module.cpp) and pybert._C.CONFIG_FIELDS,
// which pybert.BertConfig.native() follows: a new field is one line here and one field of the
// Python dataclass.
#define PYBERT_CONFIG_FIELDS(X)                                                            \
  X(int64_t, vocab_size, 0)                                                                \
  X(int64_t, num_hiddens, 0)                                                               \
  X(int64_t, num_heads, 0)                                                                 \
  X(int64_t, ffn_num_hiddens, 0)                                                           \
  X(int64_t, num_layers, 0)                                                                \
  X(int64_t, max_len, 0)                                                                   \
  X(int64_t, type_vocab_size, 2)  /* segment embedding rows (RoBERTa: 1) */                \
  X(int64_t, position_offset, 0)  /* position of token 0 (RoBERTa: padding_idx + 1) */     \
  X(int64_t, embedding_size, 0)   /* embedding width, projected to num_hiddens (ELECTRA); */ \
                                  /* 0: num_hiddens, no projection */                      \
  X(float, layer_norm_eps, 1e-5f)                                                          \
  X(Activation, ffn_activation, Activation::kReLU) /* ReLU (d2l), exact GELU (HF), SiLU */ \
  X(Activation, mlm_activation, Activation::kReLU) /* the MLM transform's, likewise */     \
  /* The layer's form (modern encoders: ModernBERT, NomicBERT, GTE). */                    \
  X(bool, pre_norm, false)      /* x += attn(LN1(x)); x += ffn(LN2(x)) (else post-norm) */ \
  X(bool, ffn_gated, false)     /* ffn1 gives [a | g] (2F wide): ffn2(act(a) * g) */       \
  X(float, rotary_base, 0.0f)   /* rotary positions' base (theta); 0: a position table */  \
  X(float, local_rotary_base, 0.0f) /* windowed layers' base; 0: rotary_base */           \
  X(int64_t, local_window, 0)   /* windowed layers attend |i - j| <= local_window; 0: */   \
                                /* every layer global */                                   \
  X(int64_t, global_every, 1)   /* with a window: layer i is global when i % n == 0 */

struct BertConfig {
#define PYBERT_CONFIG_MEMBER(type, name, default_value) type name = default_value;
  PYBERT_CONFIG_FIELDS(PYBERT_CONFIG_MEMBER)
#undef PYBERT_CONFIG_MEMBER

  int64_t head_dim() const { return num_hiddens / num_heads; }
  int64_t embedding_dim() const { return embedding_size > 0 ? embedding_size : num_hiddens; }
  // Rows of the position table: token s of a sequence reads row position_offset + s.
  int64_t position_rows() const { return max_len + position_offset; }
  bool rotary() const { return rotary_base > 0.0f; }
  // Rows of a gated FFN's first GEMM: the activated half, then the gate.
  int64_t ffn_in_rows() const { return ffn_gated ? 2 * ffn_num_hiddens : ffn_num_hiddens; }
  // The window of layer i's attention (|i - j| <= window), 0 for a global layer.
  int64_t window_of_layer(int64_t layer) const {
    return local_window > 0 && layer % global_every != 0 ? local_window : 0;
  }
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
