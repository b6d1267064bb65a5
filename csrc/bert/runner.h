// The BERT forward pass, written once over a backend (CPU or CUDA kernels) and a scalar type.
// The layer's form is data (model.h): post- or pre-norm, plain or gated FFN, absolute or
// rotary positions, global or windowed attention per layer, absent biases; every encoder
// family runs this one function.
//
// Activations stay packed (real tokens only) from the embedding to the heads, so padding costs
// nothing in the GEMMs, the LayerNorms or the attention. The caller passes one workspace of
// workspace_elements() scalars; nothing is allocated inside the forward.
#pragma once

#include "../kernels/args.h"
#include "model.h"
#include "weights.h"

namespace pybert {

// The workspace regions, in scalars, each rounded up to 64 scalars so every region starts
// 128-byte aligned (cuBLASLt picks its fastest kernels only for aligned operands).
struct WorkspaceLayout {
  int64_t embedded, x, normed, qkv, context, projected, ffn, ffn_gated, mlm_rows, mlm_hidden,
      cls_rows, pooled, total;

  WorkspaceLayout(const BertConfig& c, const BatchInputs& in) {
    const int64_t h = c.num_hiddens, t = in.total_tokens;
    const int64_t preds = in.batch * in.num_pred_positions;
    int64_t offset = 0;
    auto region = [&offset](int64_t size) {
      const int64_t start = offset;
      offset += (size + 63) / 64 * 64;
      return start;
    };
    // Embeddings narrower than the hidden state, before their projection (ELECTRA-small).
    embedded = region(c.embedding_dim() == h ? 0 : t * c.embedding_dim());
    x = region(t * h);                       // hidden state
    normed = region(c.pre_norm ? t * h : 0); // pre-norm: the LayerNorm a sublayer reads
    qkv = region(t * 3 * h);                 // fused Q, K, V
    context = region(t * h);                 // attention output
    projected = region(t * h);               // a projection before add+LayerNorm
    ffn = region(t * c.ffn_in_rows());       // FFN inner activations ([a | g] when gated)
    ffn_gated = region(c.ffn_gated ? t * c.ffn_num_hiddens : 0);  // act(a) * g
    mlm_rows = region(preds * h);            // MLM: rows at pred_positions
    mlm_hidden = region(preds * h);          // MLM: transformed rows
    cls_rows = region(in.batch * h);         // NSP: <cls> rows
    pooled = region(in.batch * h);           // NSP: pooled rows
    total = offset;
  }
};

inline int64_t workspace_elements(const BertConfig& c, const BatchInputs& in) {
  return WorkspaceLayout(c, in).total;
}

// Backend is an object (it may hold a stream, a cuBLASLt handle, ...) whose Scalar type and
// methods mirror kernels/cpu/kernels.h: gemm_bias_act, embed_packed, add_layernorm,
// add_residual_layernorm, rotary_qk, gated_activation, attention_varlen (which returns where
// it left the context rows), gather_rows, unpack_padded. Returns false when in.stop_requested
// abandoned the forward between two layers.
template <typename Backend>
bool bert_forward(Backend& backend, const BertConfig& c,
                  const BertWeights<typename Backend::Scalar>& w, const BatchInputs& in,
                  const BatchOutputs<typename Backend::Scalar>& out,
                  typename Backend::Scalar* workspace) {
  using T = typename Backend::Scalar;
  const int64_t h = c.num_hiddens;
  const int64_t t = in.total_tokens;
  const int64_t preds = in.batch * in.num_pred_positions;
  const WorkspaceLayout layout(c, in);
  // The hidden state lives in the caller's packed output when there is one: no copy at the end.
  T* x = out.encoded_packed != nullptr ? out.encoded_packed : workspace + layout.x;
  T* qkv = workspace + layout.qkv;
  T* context = workspace + layout.context;
  T* projected = workspace + layout.projected;
  T* ffn = workspace + layout.ffn;
  T* mlm_rows = workspace + layout.mlm_rows;
  T* mlm_hidden = workspace + layout.mlm_hidden;
  T* cls_rows = workspace + layout.cls_rows;
  T* pooled = workspace + layout.pooled;

  // Token s of a sequence takes position row position_offset + s. Embeddings of another
  // width than the hidden state's are normalised at their width, then projected.
  const int64_t e = c.embedding_dim();
  T* embedded = w.embedding_project_weight != nullptr ? workspace + layout.embedded : x;
  backend.embed_packed(PackedIds{in.tokens, in.segments, in.cu_seqlens, in.batch, in.seq_len, t},
                       EmbeddingTables<T>{w.token_embedding, w.segment_embedding,
                                          w.pos_embedding != nullptr
                                              ? w.pos_embedding + c.position_offset * e
                                              : nullptr,
                                          e},
                       embedded);
  if (w.embedding_ln_weight != nullptr) {
    backend.add_layernorm(embedded, nullptr, w.embedding_ln_weight, w.embedding_ln_bias,
                          embedded, t, e, c.layer_norm_eps);
  }
  if (w.embedding_project_weight != nullptr) {
    backend.gemm_bias_act(embedded, w.embedding_project_weight, w.embedding_project_bias, x, t,
                          h, e, Activation::kNone);
  }
  T* normed = workspace + layout.normed;
  T* ffn_gated = workspace + layout.ffn_gated;
  const int64_t f = c.ffn_num_hiddens;
  const float eps = c.layer_norm_eps;
  // The rotary tables from the first token's position row on.
  const int64_t half = c.head_dim() / 2, first_row = c.position_offset * half;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const auto& layer = w.layers[static_cast<size_t>(i)];
    if (in.stop_requested && in.stop_requested()) return false;
    const int64_t window = c.window_of_layer(i);
    // Pre-norm: the attention reads LN1(x) (a layer without ln1 reads x itself).
    const T* attention_in = x;
    if (c.pre_norm && layer.ln1_weight != nullptr) {
      backend.add_layernorm(x, nullptr, layer.ln1_weight, layer.ln1_bias, normed, t, h, eps);
      attention_in = normed;
    }
    backend.gemm_bias_act(attention_in, layer.qkv_weight, layer.qkv_bias, qkv, t, 3 * h, h,
                          Activation::kNone);
    if (w.rotary_cos != nullptr) {
      const bool local = window > 0 && w.local_rotary_cos != nullptr;
      backend.rotary_qk(qkv, in.cu_seqlens, in.batch, t, c.num_heads, c.head_dim(),
                        (local ? w.local_rotary_cos : w.rotary_cos) + first_row,
                        (local ? w.local_rotary_sin : w.rotary_sin) + first_row);
    }
    // The context rows land in `context`, or in a buffer of the attention library's own.
    const T* attended = backend.attention_varlen(qkv, in.cu_seqlens, context, in.batch, t,
                                                 in.max_seqlen, c.num_heads, c.head_dim(),
                                                 window);
    backend.gemm_bias_act(attended, layer.out_weight, layer.out_bias, projected, t, h, h,
                          Activation::kNone);
    // Post-norm: x = LN1(x + attention), and the FFN reads x; pre-norm: x += attention, and
    // the FFN reads LN2(x).
    const T* ffn_in = x;
    if (c.pre_norm) {
      backend.add_residual_layernorm(projected, x, layer.ln2_weight, layer.ln2_bias, normed, t,
                                     h, eps);
      ffn_in = normed;
    } else {
      backend.add_layernorm(projected, x, layer.ln1_weight, layer.ln1_bias, x, t, h, eps);
    }
    if (c.ffn_gated) {
      backend.gemm_bias_act(ffn_in, layer.ffn1_weight, layer.ffn1_bias, ffn, t, 2 * f, h,
                            Activation::kNone);
      backend.gated_activation(ffn, ffn_gated, t, f, c.ffn_activation);
      backend.gemm_bias_act(ffn_gated, layer.ffn2_weight, layer.ffn2_bias, projected, t, h, f,
                            Activation::kNone);
    } else {
      backend.gemm_bias_act(ffn_in, layer.ffn1_weight, layer.ffn1_bias, ffn, t, f, h,
                            c.ffn_activation);
      backend.gemm_bias_act(ffn, layer.ffn2_weight, layer.ffn2_bias, projected, t, h, f,
                            Activation::kNone);
    }
    if (c.pre_norm) {
      backend.add_residual_layernorm(projected, x, nullptr, nullptr, nullptr, t, h, eps);
    } else {
      backend.add_layernorm(projected, x, layer.ln2_weight, layer.ln2_bias, x, t, h, eps);
    }
  }
  if (w.final_ln_weight != nullptr) {
    backend.add_layernorm(x, nullptr, w.final_ln_weight, w.final_ln_bias, x, t, h, eps);
  }
  if (out.encoded != nullptr) {
    backend.unpack_padded(x, in.cu_seqlens, out.encoded, in.batch, in.seq_len, h);
  }
  if (in.pred_positions != nullptr && preds > 0) {
    backend.gather_rows(x, in.cu_seqlens, in.pred_positions, mlm_rows, in.batch,
                        in.num_pred_positions, h);
    backend.gemm_bias_act(mlm_rows, w.mlm_dense_weight, w.mlm_dense_bias, mlm_hidden, preds, h,
                          h, c.mlm_activation);
    backend.add_layernorm(mlm_hidden, nullptr, w.mlm_ln_weight, w.mlm_ln_bias, mlm_hidden,
                          preds, h, c.layer_norm_eps);
    backend.gemm_bias_act(mlm_hidden, w.mlm_decoder_weight, w.mlm_decoder_bias,
                          out.mlm_logits, preds, c.vocab_size, h, Activation::kNone);
  }
  if (in.with_nsp) {
    backend.gather_rows(x, in.cu_seqlens, nullptr, cls_rows, in.batch, 1, h);
    backend.gemm_bias_act(cls_rows, w.pooler_weight, w.pooler_bias, pooled, in.batch, h, h,
                          Activation::kTanh);
    backend.gemm_bias_act(pooled, w.nsp_weight, w.nsp_bias, out.nsp_logits, in.batch, 2, h,
                          Activation::kNone);
  }
  return true;
}

}  // namespace pybert
