// The only place where torch and pybind11 meet the runner and the kernels.
//
// pybert._C.Engine holds the packed weights as tensors and runs one forward per call.
// torch.ops.pybert.* exposes each kernel on its own, for the kernel tests (and, with the fake
// implementations in pybert/ops.py, for torch.compile).
#include <torch/extension.h>

#include <optional>
#include <string>
#include <unordered_map>

#include "bert/backend_cpu.h"
#include "bert/runner.h"
#include "kernels/cpu/kernels.h"

namespace pybert {
namespace {

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t dim) {
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", c10::toString(dtype), ", got ",
              c10::toString(t.scalar_type()));
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU, got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::kReLU;
  if (name == "gelu") return Activation::kGELU;
  TORCH_CHECK(false, "unknown ffn_activation '", name, "' (expected 'relu' or 'gelu')");
}

int64_t checked_total_tokens(const at::Tensor& cu_seqlens, int64_t batch, int64_t max_seqlen) {
  check_tensor(cu_seqlens, "cu_seqlens", at::kInt, 1);
  TORCH_CHECK(cu_seqlens.size(0) == batch + 1, "cu_seqlens must have batch + 1 = ", batch + 1,
              " entries, got ", cu_seqlens.size(0));
  const int32_t* cu = cu_seqlens.data_ptr<int32_t>();
  TORCH_CHECK(cu[0] == 0, "cu_seqlens must start at 0");
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t length = cu[b + 1] - cu[b];
    TORCH_CHECK(length >= 1 && length <= max_seqlen, "sequence ", b, " has length ", length,
                ", expected 1..max_seqlen=", max_seqlen);
  }
  return cu[batch];
}

// ---------------------------------------------------------------------------------------------
// Engine: the packed weights of one BERT and its forward pass.

class Engine {
 public:
  Engine(const py::dict& config, const std::unordered_map<std::string, at::Tensor>& weights) {
    config_.vocab_size = config["vocab_size"].cast<int64_t>();
    config_.num_hiddens = config["num_hiddens"].cast<int64_t>();
    config_.num_heads = config["num_heads"].cast<int64_t>();
    config_.ffn_num_hiddens = config["ffn_num_hiddens"].cast<int64_t>();
    config_.num_layers = config["num_layers"].cast<int64_t>();
    config_.max_len = config["max_len"].cast<int64_t>();
    config_.layer_norm_eps = config["layer_norm_eps"].cast<float>();
    config_.ffn_activation = parse_activation(config["ffn_activation"].cast<std::string>());
    TORCH_CHECK(config_.num_heads > 0 && config_.num_hiddens % config_.num_heads == 0,
                "num_hiddens (", config_.num_hiddens, ") must be a multiple of num_heads (",
                config_.num_heads, ")");

    const int64_t v = config_.vocab_size, h = config_.num_hiddens, f = config_.ffn_num_hiddens;
    auto take = [&](const std::string& name, std::vector<int64_t> shape) -> const float* {
      auto it = weights.find(name);
      TORCH_CHECK(it != weights.end(), "missing weight '", name, "'");
      const at::Tensor& t = it->second;
      check_tensor(t, name.c_str(), at::kFloat, static_cast<int64_t>(shape.size()));
      TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "weight '", name, "' must have shape ",
                  at::IntArrayRef(shape), ", got ", t.sizes());
      held_.push_back(t);
      return t.data_ptr<float>();
    };
    weights_.token_embedding = take("token_embedding", {v, h});
    weights_.segment_embedding = take("segment_embedding", {2, h});
    weights_.pos_embedding = take("pos_embedding", {config_.max_len, h});
    for (int64_t i = 0; i < config_.num_layers; ++i) {
      const std::string p = "layers." + std::to_string(i) + ".";
      weights_.layers.push_back(BertLayerWeights<float>{
          take(p + "qkv_weight", {3 * h, h}), take(p + "qkv_bias", {3 * h}),
          take(p + "out_weight", {h, h}), take(p + "out_bias", {h}),
          take(p + "ln1_weight", {h}), take(p + "ln1_bias", {h}),
          take(p + "ffn1_weight", {f, h}), take(p + "ffn1_bias", {f}),
          take(p + "ffn2_weight", {h, f}), take(p + "ffn2_bias", {h}),
          take(p + "ln2_weight", {h}), take(p + "ln2_bias", {h})});
    }
    weights_.pooler_weight = take("pooler_weight", {h, h});
    weights_.pooler_bias = take("pooler_bias", {h});
    weights_.nsp_weight = take("nsp_weight", {2, h});
    weights_.nsp_bias = take("nsp_bias", {2});
    weights_.mlm_dense_weight = take("mlm_dense_weight", {h, h});
    weights_.mlm_dense_bias = take("mlm_dense_bias", {h});
    weights_.mlm_ln_weight = take("mlm_ln_weight", {h});
    weights_.mlm_ln_bias = take("mlm_ln_bias", {h});
    weights_.mlm_decoder_weight = take("mlm_decoder_weight", {v, h});
    weights_.mlm_decoder_bias = take("mlm_decoder_bias", {v});
  }

  // Returns (encoded (B, S, H) or None, mlm_logits (B, P, V) or None, nsp_logits (B, 2) or None).
  // The caller (pybert.Engine) has validated ids, lengths and positions; the checks here only
  // keep a wrong call from reading out of bounds.
  std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>>
  forward(const at::Tensor& tokens, const at::Tensor& segments, const at::Tensor& cu_seqlens,
          int64_t max_seqlen, const std::optional<at::Tensor>& pred_positions, bool with_encoded,
          bool with_nsp) {
    check_tensor(tokens, "tokens", at::kLong, 2);
    check_tensor(segments, "segments", at::kLong, 2);
    TORCH_CHECK(segments.sizes() == tokens.sizes(), "segments shape ", segments.sizes(),
                " must equal tokens shape ", tokens.sizes());
    const int64_t batch = tokens.size(0), seq_len = tokens.size(1);
    TORCH_CHECK(batch >= 1 && seq_len >= 1, "tokens must be non-empty, got ", tokens.sizes());
    TORCH_CHECK(seq_len <= config_.max_len, "sequence length ", seq_len, " exceeds max_len ",
                config_.max_len);
    TORCH_CHECK(max_seqlen >= 1 && max_seqlen <= seq_len, "max_seqlen ", max_seqlen,
                " must be in [1, ", seq_len, "]");

    BatchInputs in{};
    in.tokens = tokens.data_ptr<int64_t>();
    in.segments = segments.data_ptr<int64_t>();
    in.cu_seqlens = cu_seqlens.data_ptr<int32_t>();
    in.batch = batch;
    in.seq_len = seq_len;
    in.total_tokens = checked_total_tokens(cu_seqlens, batch, max_seqlen);
    in.max_seqlen = max_seqlen;
    in.with_nsp = with_nsp;
    if (pred_positions.has_value()) {
      check_tensor(*pred_positions, "pred_positions", at::kLong, 2);
      TORCH_CHECK(pred_positions->size(0) == batch, "pred_positions must have ", batch,
                  " rows, got ", pred_positions->size(0));
      in.pred_positions = pred_positions->data_ptr<int64_t>();
      in.num_pred_positions = pred_positions->size(1);
    }

    const auto opts = tokens.options().dtype(at::kFloat);
    at::Tensor workspace = at::empty({workspace_elements(config_, in)}, opts);
    std::optional<at::Tensor> encoded, mlm_logits, nsp_logits;
    BatchOutputs<float> out{};
    if (with_encoded) {
      encoded = at::empty({batch, seq_len, config_.num_hiddens}, opts);
      out.encoded = encoded->data_ptr<float>();
    }
    if (pred_positions.has_value()) {
      mlm_logits = at::empty({batch, in.num_pred_positions, config_.vocab_size}, opts);
      out.mlm_logits = mlm_logits->data_ptr<float>();
    }
    if (with_nsp) {
      nsp_logits = at::empty({batch, 2}, opts);
      out.nsp_logits = nsp_logits->data_ptr<float>();
    }
    bert_forward<CpuBackend>(config_, weights_, in, out, workspace.data_ptr<float>(), nullptr);
    return {encoded, mlm_logits, nsp_logits};
  }

 private:
  BertConfig config_;
  BertWeights<float> weights_{};
  std::vector<at::Tensor> held_;  // keeps the weight storage alive behind weights_' pointers
};

// ---------------------------------------------------------------------------------------------
// Single kernels as torch ops (CPU).

at::Tensor gemm_bias_act_op(const at::Tensor& a, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t activation) {
  check_tensor(a, "a", at::kFloat, 2);
  check_tensor(weight, "weight", at::kFloat, 2);
  TORCH_CHECK(a.size(1) == weight.size(1), "a (", a.sizes(), ") and weight (", weight.sizes(),
              ") disagree on the inner dimension");
  TORCH_CHECK(activation >= 0 && activation <= 3, "activation must be 0..3, got ", activation);
  if (bias.has_value()) {
    check_tensor(*bias, "bias", at::kFloat, 1);
    TORCH_CHECK(bias->size(0) == weight.size(0), "bias must have ", weight.size(0), " entries");
  }
  at::Tensor out = at::empty({a.size(0), weight.size(0)}, a.options());
  cpu::gemm_bias_act(a.data_ptr<float>(), weight.data_ptr<float>(),
                     bias.has_value() ? bias->data_ptr<float>() : nullptr, out.data_ptr<float>(),
                     a.size(0), weight.size(0), a.size(1), static_cast<Activation>(activation));
  return out;
}

at::Tensor embed_packed_op(const at::Tensor& tokens, const at::Tensor& segments,
                           const at::Tensor& cu_seqlens, int64_t total_tokens,
                           const at::Tensor& token_table, const at::Tensor& segment_table,
                           const at::Tensor& pos_table) {
  check_tensor(tokens, "tokens", at::kLong, 2);
  check_tensor(segments, "segments", at::kLong, 2);
  check_tensor(token_table, "token_table", at::kFloat, 2);
  check_tensor(segment_table, "segment_table", at::kFloat, 2);
  check_tensor(pos_table, "pos_table", at::kFloat, 2);
  const int64_t batch = tokens.size(0), seq_len = tokens.size(1), hidden = token_table.size(1);
  TORCH_CHECK(pos_table.size(0) >= seq_len, "pos_table has ", pos_table.size(0),
              " rows, fewer than seq_len ", seq_len);
  TORCH_CHECK(checked_total_tokens(cu_seqlens, batch, seq_len) == total_tokens,
              "total_tokens must equal cu_seqlens[-1]");
  TORCH_CHECK(tokens.min().item<int64_t>() >= 0 &&
                  tokens.max().item<int64_t>() < token_table.size(0),
              "tokens out of range");
  TORCH_CHECK(segments.min().item<int64_t>() >= 0 && segments.max().item<int64_t>() < 2,
              "segments must be 0 or 1");
  at::Tensor out = at::empty({total_tokens, hidden}, token_table.options());
  cpu::embed_packed(tokens.data_ptr<int64_t>(), segments.data_ptr<int64_t>(),
                    cu_seqlens.data_ptr<int32_t>(), token_table.data_ptr<float>(),
                    segment_table.data_ptr<float>(), pos_table.data_ptr<float>(),
                    out.data_ptr<float>(), batch, seq_len, hidden);
  return out;
}

at::Tensor add_layernorm_op(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                            const at::Tensor& weight, const at::Tensor& bias, double eps) {
  check_tensor(x, "x", at::kFloat, 2);
  check_tensor(weight, "weight", at::kFloat, 1);
  check_tensor(bias, "bias", at::kFloat, 1);
  TORCH_CHECK(weight.size(0) == x.size(1) && bias.size(0) == x.size(1),
              "weight and bias must have ", x.size(1), " entries");
  if (residual.has_value()) {
    check_tensor(*residual, "residual", at::kFloat, 2);
    TORCH_CHECK(residual->sizes() == x.sizes(), "residual must have the shape of x");
  }
  at::Tensor out = at::empty_like(x);
  cpu::add_layernorm(x.data_ptr<float>(),
                     residual.has_value() ? residual->data_ptr<float>() : nullptr,
                     weight.data_ptr<float>(), bias.data_ptr<float>(), out.data_ptr<float>(),
                     x.size(0), x.size(1), static_cast<float>(eps));
  return out;
}

at::Tensor attention_varlen_op(const at::Tensor& qkv, const at::Tensor& cu_seqlens,
                               int64_t max_seqlen, int64_t num_heads) {
  check_tensor(qkv, "qkv", at::kFloat, 2);
  TORCH_CHECK(num_heads >= 1 && qkv.size(1) % (3 * num_heads) == 0, "qkv width ", qkv.size(1),
              " must be 3 * num_heads * head_dim");
  const int64_t batch = cu_seqlens.size(0) - 1;
  TORCH_CHECK(checked_total_tokens(cu_seqlens, batch, max_seqlen) == qkv.size(0),
              "qkv must have cu_seqlens[-1] rows");
  const int64_t hidden = qkv.size(1) / 3;
  at::Tensor out = at::empty({qkv.size(0), hidden}, qkv.options());
  cpu::attention_varlen(qkv.data_ptr<float>(), cu_seqlens.data_ptr<int32_t>(),
                        out.data_ptr<float>(), batch, max_seqlen, num_heads, hidden / num_heads);
  return out;
}

at::Tensor gather_rows_op(const at::Tensor& packed, const at::Tensor& cu_seqlens,
                          const std::optional<at::Tensor>& positions) {
  check_tensor(packed, "packed", at::kFloat, 2);
  const int64_t batch = cu_seqlens.size(0) - 1;
  TORCH_CHECK(checked_total_tokens(cu_seqlens, batch, packed.size(0)) == packed.size(0),
              "packed must have cu_seqlens[-1] rows");
  int64_t num_positions = 1;
  if (positions.has_value()) {
    check_tensor(*positions, "positions", at::kLong, 2);
    TORCH_CHECK(positions->size(0) == batch, "positions must have ", batch, " rows");
    num_positions = positions->size(1);
    const int32_t* cu = cu_seqlens.data_ptr<int32_t>();
    const int64_t* pos = positions->data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t p = 0; p < num_positions; ++p)
        TORCH_CHECK(pos[b * num_positions + p] >= 0 &&
                        pos[b * num_positions + p] < cu[b + 1] - cu[b],
                    "positions[", b, ", ", p, "] is outside sequence ", b);
  }
  at::Tensor out = at::empty({batch * num_positions, packed.size(1)}, packed.options());
  cpu::gather_rows(packed.data_ptr<float>(), cu_seqlens.data_ptr<int32_t>(),
                   positions.has_value() ? positions->data_ptr<int64_t>() : nullptr,
                   out.data_ptr<float>(), batch, num_positions, packed.size(1));
  return out;
}

at::Tensor unpack_padded_op(const at::Tensor& packed, const at::Tensor& cu_seqlens,
                            int64_t seq_len) {
  check_tensor(packed, "packed", at::kFloat, 2);
  const int64_t batch = cu_seqlens.size(0) - 1;
  TORCH_CHECK(checked_total_tokens(cu_seqlens, batch, seq_len) == packed.size(0),
              "packed must have cu_seqlens[-1] rows");
  at::Tensor out = at::empty({batch, seq_len, packed.size(1)}, packed.options());
  cpu::unpack_padded(packed.data_ptr<float>(), cu_seqlens.data_ptr<int32_t>(),
                     out.data_ptr<float>(), batch, seq_len, packed.size(1));
  return out;
}

}  // namespace
}  // namespace pybert

TORCH_LIBRARY(pybert, m) {
  m.def("gemm_bias_act(Tensor a, Tensor weight, Tensor? bias, int activation) -> Tensor");
  m.def("embed_packed(Tensor tokens, Tensor segments, Tensor cu_seqlens, int total_tokens, "
        "Tensor token_table, Tensor segment_table, Tensor pos_table) -> Tensor");
  m.def("add_layernorm(Tensor x, Tensor? residual, Tensor weight, Tensor bias, float eps) "
        "-> Tensor");
  m.def("attention_varlen(Tensor qkv, Tensor cu_seqlens, int max_seqlen, int num_heads) "
        "-> Tensor");
  m.def("gather_rows(Tensor packed, Tensor cu_seqlens, Tensor? positions) -> Tensor");
  m.def("unpack_padded(Tensor packed, Tensor cu_seqlens, int seq_len) -> Tensor");
}

TORCH_LIBRARY_IMPL(pybert, CPU, m) {
  m.impl("gemm_bias_act", &pybert::gemm_bias_act_op);
  m.impl("embed_packed", &pybert::embed_packed_op);
  m.impl("add_layernorm", &pybert::add_layernorm_op);
  m.impl("attention_varlen", &pybert::attention_varlen_op);
  m.impl("gather_rows", &pybert::gather_rows_op);
  m.impl("unpack_padded", &pybert::unpack_padded_op);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "pybert's C++/CUDA engine (see pybert.Engine for the Python API)";
  m.attr("cuda_available") = false;
  py::class_<pybert::Engine>(m, "Engine")
      .def(py::init<const py::dict&, const std::unordered_map<std::string, at::Tensor>&>(),
           py::arg("config"), py::arg("weights"))
      .def("forward", &pybert::Engine::forward, py::arg("tokens"), py::arg("segments"),
           py::arg("cu_seqlens"), py::arg("max_seqlen"), py::arg("pred_positions"),
           py::arg("with_encoded") = true, py::arg("with_nsp") = true,
           py::call_guard<py::gil_scoped_release>());
}
