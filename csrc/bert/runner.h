// The BERT forward pass, written once over a backend (CPU or CUDA kernels) and a scalar type.
//
// Activations stay packed (real tokens only) from the embedding to the heads, so padding costs
// nothing in the GEMMs, the LayerNorms or the attention. The caller passes one workspace of
// workspace_elements() scalars; nothing is allocated inside the forward.
#pragma once

#include "model.h"

namespace pybert {

// Scalars of workspace the forward needs for this batch.
inline int64_t workspace_elements(const BertConfig& c, const BatchInputs& in) {
  const int64_t h = c.num_hiddens;
  const int64_t t = in.total_tokens;
  const int64_t preds = in.batch * in.num_pred_positions;
  return t * h              // hidden state x
         + t * 3 * h        // fused QKV
         + t * h            // attention context
         + t * h            // projection output before add+LayerNorm
         + t * c.ffn_num_hiddens
         + 2 * preds * h    // MLM: gathered rows, transformed rows
         + 2 * in.batch * h;  // NSP: <cls> rows, pooled rows
}

// Backend provides, for its Scalar type and Stream, the kernels of kernels/cpu/kernels.h:
// gemm_bias_act, embed_packed, add_layernorm, attention_varlen, gather_rows, unpack_padded.
template <typename Backend>
void bert_forward(const BertConfig& c, const BertWeights<typename Backend::Scalar>& w,
                  const BatchInputs& in, const BatchOutputs<typename Backend::Scalar>& out,
                  typename Backend::Scalar* workspace, typename Backend::Stream stream) {
  using T = typename Backend::Scalar;
  const int64_t h = c.num_hiddens;
  const int64_t t = in.total_tokens;
  const int64_t preds = in.batch * in.num_pred_positions;

  T* x = workspace;
  T* qkv = x + t * h;
  T* context = qkv + t * 3 * h;
  T* projected = context + t * h;
  T* ffn = projected + t * h;
  T* mlm_rows = ffn + t * c.ffn_num_hiddens;
  T* mlm_hidden = mlm_rows + preds * h;
  T* cls_rows = mlm_hidden + preds * h;
  T* pooled = cls_rows + in.batch * h;

  Backend::embed_packed(in.tokens, in.segments, in.cu_seqlens, w.token_embedding,
                        w.segment_embedding, w.pos_embedding, x, in.batch, in.seq_len, h, stream);
  for (const auto& layer : w.layers) {
    Backend::gemm_bias_act(x, layer.qkv_weight, layer.qkv_bias, qkv, t, 3 * h, h,
                           Activation::kNone, stream);
    Backend::attention_varlen(qkv, in.cu_seqlens, context, in.batch, in.max_seqlen, c.num_heads,
                              c.head_dim(), stream);
    Backend::gemm_bias_act(context, layer.out_weight, layer.out_bias, projected, t, h, h,
                           Activation::kNone, stream);
    Backend::add_layernorm(projected, x, layer.ln1_weight, layer.ln1_bias, x, t, h,
                           c.layer_norm_eps, stream);
    Backend::gemm_bias_act(x, layer.ffn1_weight, layer.ffn1_bias, ffn, t, c.ffn_num_hiddens, h,
                           c.ffn_activation, stream);
    Backend::gemm_bias_act(ffn, layer.ffn2_weight, layer.ffn2_bias, projected, t, h,
                           c.ffn_num_hiddens, Activation::kNone, stream);
    Backend::add_layernorm(projected, x, layer.ln2_weight, layer.ln2_bias, x, t, h,
                           c.layer_norm_eps, stream);
  }
  if (out.encoded != nullptr) {
    Backend::unpack_padded(x, in.cu_seqlens, out.encoded, in.batch, in.seq_len, h, stream);
  }
  if (in.pred_positions != nullptr && preds > 0) {
    Backend::gather_rows(x, in.cu_seqlens, in.pred_positions, mlm_rows, in.batch,
                         in.num_pred_positions, h, stream);
    Backend::gemm_bias_act(mlm_rows, w.mlm_dense_weight, w.mlm_dense_bias, mlm_hidden, preds, h, h,
                           Activation::kReLU, stream);
    Backend::add_layernorm(mlm_hidden, nullptr, w.mlm_ln_weight, w.mlm_ln_bias, mlm_hidden, preds,
                           h, c.layer_norm_eps, stream);
    Backend::gemm_bias_act(mlm_hidden, w.mlm_decoder_weight, w.mlm_decoder_bias, out.mlm_logits,
                           preds, c.vocab_size, h, Activation::kNone, stream);
  }
  if (in.with_nsp) {
    Backend::gather_rows(x, in.cu_seqlens, nullptr, cls_rows, in.batch, 1, h, stream);
    Backend::gemm_bias_act(cls_rows, w.pooler_weight, w.pooler_bias, pooled, in.batch, h, h,
                           Activation::kTanh, stream);
    Backend::gemm_bias_act(pooled, w.nsp_weight, w.nsp_bias, out.nsp_logits, in.batch, 2, h,
                           Activation::kNone, stream);
  }
}

}  // namespace pybert
