// The packed-weight layout of the BERT the runner executes, defined once.
//
// Each X(...) line below is one weight: its name, the part of the model it belongs to and its
// shape in terms of the config. The lines generate the fields of BertWeights (the runner's
// view), the shape checks of the bindings and pybert._C.weight_shapes (what the Python packers
// are tested against). A new variant (pre-LN, another position scheme) adds lines here and
// reads them in runner.h: nothing else lists weights.
//
// Every matrix is in nn.Linear layout (out_features, in_features). qkv_weight is W_q, W_k,
// W_v stacked: (3H, H), so one GEMM yields [Q | K | V].
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model.h"

namespace pybert {

// The parts of a model. kEmbeddings and kLayers are always there; the others are optional and
// come with all of their required weights or none: the position table (absent with rotary
// positions), the embedding LayerNorm (Hugging Face BERT has one, d2l has none), the projection
// of narrower embeddings to the hidden width (ELECTRA-small; required when embedding_size
// differs from num_hiddens), the rotary cos/sin tables (required with rotary positions; the
// windowed layers' own when their base differs), the final LayerNorm of a pre-norm encoder,
// the NSP head with its pooler, the MLM head.
enum class WeightPart {
  kEmbeddings, kPositionTable, kEmbeddingNorm, kEmbeddingProjection, kRotary, kLocalRotary,
  kLayers, kFinalNorm, kNsp, kMlm
};

// Whether a weight must be there when its part is. Biases are optional one by one (modern
// encoders drop some or all: an absent bias adds nothing), as is ln1 of a pre-norm layer
// (ModernBERT's first layer reads the embeddings' LayerNorm directly).
enum class WeightPresence { kRequired, kOptional };

// The sizes a shape is written in; kOne marks a vector (a 1-d weight).
enum class WeightDim {
  kOne, kTwo, kHidden, kThreeHidden, kFfn, kFfnIn, kVocab, kTypes, kPositions, kEmbedding,
  kHalfHead
};

// name, part, rows, cols (cols kOne: a vector of `rows` entries), presence
#define PYBERT_MODEL_WEIGHTS(X)                                                         \
  X(token_embedding, kEmbeddings, kVocab, kEmbedding, kRequired)                        \
  X(segment_embedding, kEmbeddings, kTypes, kEmbedding, kRequired)                      \
  X(pos_embedding, kPositionTable, kPositions, kEmbedding, kRequired)                   \
  X(embedding_ln_weight, kEmbeddingNorm, kEmbedding, kOne, kRequired)                   \
  X(embedding_ln_bias, kEmbeddingNorm, kEmbedding, kOne, kOptional)                     \
  X(embedding_project_weight, kEmbeddingProjection, kHidden, kEmbedding, kRequired)     \
  X(embedding_project_bias, kEmbeddingProjection, kHidden, kOne, kOptional)             \
  X(rotary_cos, kRotary, kPositions, kHalfHead, kRequired) /* cos(s * base^(-2i/d)) */ \
  X(rotary_sin, kRotary, kPositions, kHalfHead, kRequired)                              \
  X(local_rotary_cos, kLocalRotary, kPositions, kHalfHead, kRequired)                   \
  X(local_rotary_sin, kLocalRotary, kPositions, kHalfHead, kRequired)                   \
  X(final_ln_weight, kFinalNorm, kHidden, kOne, kRequired)                              \
  X(final_ln_bias, kFinalNorm, kHidden, kOne, kOptional)                                \
  X(pooler_weight, kNsp, kHidden, kHidden, kRequired) /* tanh(pooler(cls)) */           \
  X(pooler_bias, kNsp, kHidden, kOne, kRequired)                                        \
  X(nsp_weight, kNsp, kTwo, kHidden, kRequired)                                         \
  X(nsp_bias, kNsp, kTwo, kOne, kRequired)                                              \
  X(mlm_dense_weight, kMlm, kHidden, kHidden, kRequired) /* LN(act(dense)) */           \
  X(mlm_dense_bias, kMlm, kHidden, kOne, kOptional)                                     \
  X(mlm_ln_weight, kMlm, kHidden, kOne, kRequired)                                      \
  X(mlm_ln_bias, kMlm, kHidden, kOne, kOptional)                                        \
  X(mlm_decoder_weight, kMlm, kVocab, kHidden, kRequired)                               \
  X(mlm_decoder_bias, kMlm, kVocab, kOne, kOptional)

// One encoder block; named "layers.<i>.<name>". Post-norm (BERT): x = LN1(x + attn(x)),
// x = LN2(x + ffn(x)); pre-norm: x += attn(LN1(x)), x += ffn(LN2(x)).
#define PYBERT_LAYER_WEIGHTS(X)                            \
  X(qkv_weight, kLayers, kThreeHidden, kHidden, kRequired) \
  X(qkv_bias, kLayers, kThreeHidden, kOne, kOptional)      \
  X(out_weight, kLayers, kHidden, kHidden, kRequired)      \
  X(out_bias, kLayers, kHidden, kOne, kOptional)           \
  X(ln1_weight, kLayers, kHidden, kOne, kOptional)         \
  X(ln1_bias, kLayers, kHidden, kOne, kOptional)           \
  X(ffn1_weight, kLayers, kFfnIn, kHidden, kRequired)      \
  X(ffn1_bias, kLayers, kFfnIn, kOne, kOptional)           \
  X(ffn2_weight, kLayers, kHidden, kFfn, kRequired)        \
  X(ffn2_bias, kLayers, kHidden, kOne, kOptional)          \
  X(ln2_weight, kLayers, kHidden, kOne, kRequired)         \
  X(ln2_bias, kLayers, kHidden, kOne, kOptional)

#define PYBERT_WEIGHT_FIELD(name, part, rows, cols, presence) const T* name = nullptr;

template <typename T>
struct BertLayerWeights {
  PYBERT_LAYER_WEIGHTS(PYBERT_WEIGHT_FIELD)
};

// The weights of one model in the engine's scalar type T; an absent optional part is null.
template <typename T>
struct BertWeights {
  PYBERT_MODEL_WEIGHTS(PYBERT_WEIGHT_FIELD)
  std::vector<BertLayerWeights<T>> layers;
};

#undef PYBERT_WEIGHT_FIELD

inline int64_t weight_dim_size(WeightDim dim, const BertConfig& c) {
  switch (dim) {
    case WeightDim::kOne: return 1;
    case WeightDim::kTwo: return 2;
    case WeightDim::kHidden: return c.num_hiddens;
    case WeightDim::kThreeHidden: return 3 * c.num_hiddens;
    case WeightDim::kFfn: return c.ffn_num_hiddens;
    case WeightDim::kFfnIn: return c.ffn_in_rows();
    case WeightDim::kVocab: return c.vocab_size;
    case WeightDim::kTypes: return c.type_vocab_size;
    case WeightDim::kPositions: return c.position_rows();
    case WeightDim::kEmbedding: return c.embedding_dim();
    case WeightDim::kHalfHead: return c.head_dim() / 2;
  }
  return 0;
}

// One weight of a config: its full name, its part, its shape ({rows} or {rows, cols}), and
// whether its part needs it.
struct WeightSpec {
  std::string name;
  WeightPart part;
  std::vector<int64_t> shape;
  bool optional;
};

// Calls fn(spec, field) for every weight of `weights` (num_layers of them in config), where
// field is the `const T*&` the weight's pointer goes to. The layers vector is resized first.
template <typename T, typename Fn>
void for_each_weight(const BertConfig& c, BertWeights<T>& weights, Fn&& fn) {
  auto spec = [&c](std::string name, WeightPart part, WeightDim rows, WeightDim cols,
                   WeightPresence presence) {
    std::vector<int64_t> shape{weight_dim_size(rows, c)};
    if (cols != WeightDim::kOne) shape.push_back(weight_dim_size(cols, c));
    return WeightSpec{std::move(name), part, std::move(shape),
                      presence == WeightPresence::kOptional};
  };
#define PYBERT_VISIT(name, part, rows, cols, presence)                             \
  fn(spec(prefix + #name, WeightPart::part, WeightDim::rows, WeightDim::cols,      \
          WeightPresence::presence),                                               \
     target.name);
  {
    const std::string prefix;
    auto& target = weights;
    PYBERT_MODEL_WEIGHTS(PYBERT_VISIT)
  }
  weights.layers.resize(static_cast<size_t>(c.num_layers));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string prefix = "layers." + std::to_string(i) + ".";
    auto& target = weights.layers[static_cast<size_t>(i)];
    PYBERT_LAYER_WEIGHTS(PYBERT_VISIT)
  }
#undef PYBERT_VISIT
}

// Calls fn(weight, bias, n, k) for every matrix a GEMM of the forward reads, (n, k) in
// nn.Linear layout with its bias; an absent head's are skipped. What a backend prepares for
// its GEMM library when an engine is built.
template <typename T, typename Fn>
void for_each_gemm_weight(const BertConfig& c, const BertWeights<T>& w, Fn&& fn) {
  auto visit = [&fn](const T* weight, const T* bias, int64_t n, int64_t k) {
    if (weight != nullptr) fn(weight, bias, n, k);
  };
  const int64_t h = c.num_hiddens;
  visit(w.embedding_project_weight, w.embedding_project_bias, h, c.embedding_dim());
  for (const auto& layer : w.layers) {
    visit(layer.qkv_weight, layer.qkv_bias, 3 * h, h);
    visit(layer.out_weight, layer.out_bias, h, h);
    visit(layer.ffn1_weight, layer.ffn1_bias, c.ffn_in_rows(), h);
    visit(layer.ffn2_weight, layer.ffn2_bias, h, c.ffn_num_hiddens);
  }
  visit(w.pooler_weight, w.pooler_bias, h, h);
  visit(w.mlm_dense_weight, w.mlm_dense_bias, h, h);
  visit(w.mlm_decoder_weight, w.mlm_decoder_bias, c.vocab_size, h);
}

inline const char* weight_part_name(WeightPart part) {
  switch (part) {
    case WeightPart::kEmbeddings: return "embeddings";
    case WeightPart::kPositionTable: return "position_table";
    case WeightPart::kEmbeddingNorm: return "embedding_norm";
    case WeightPart::kEmbeddingProjection: return "embedding_projection";
    case WeightPart::kRotary: return "rotary";
    case WeightPart::kLocalRotary: return "local_rotary";
    case WeightPart::kLayers: return "layers";
    case WeightPart::kFinalNorm: return "final_norm";
    case WeightPart::kNsp: return "nsp";
    case WeightPart::kMlm: return "mlm";
  }
  return "";
}

inline bool weight_part_is_optional(WeightPart part) {
  return part != WeightPart::kEmbeddings && part != WeightPart::kLayers;
}

}  // namespace pybert
