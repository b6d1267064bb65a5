#include "engine.h"

#include <c10/core/DeviceGuard.h>

#include <map>
#include <mutex>
#include <set>

#include "bert/runner.h"
#include "tensor_checks.h"

namespace pybert {

WeightStorage parse_weight_storage(const std::string& name) {
  if (name == "plain") return WeightStorage::kPlain;
  if (name == "packed") return WeightStorage::kPacked;
  if (name == "int8") return WeightStorage::kInt8;
  TORCH_CHECK_VALUE(false, "weight_storage must be 'packed', 'plain' or 'int8', got '", name,
                    "'");
}

Engine::Engine(const BertConfig& config, const WeightTensors& weights,
               const std::string& weight_storage, const CpuPlan& cpu_plan)
    : config_(config) {
  const WeightStorage storage = parse_weight_storage(weight_storage);
  TORCH_CHECK(config.num_heads > 0 && config.num_hiddens % config.num_heads == 0,
              "num_hiddens (", config.num_hiddens, ") must be a multiple of num_heads (",
              config.num_heads, ")");
  auto first = weights.find("token_embedding");
  TORCH_CHECK(first != weights.end(), "missing weight 'token_embedding'");
  device_ = first->second.device();
  dtype_ = first->second.scalar_type();

  // Per part: (required weights found, required weights expected, optional weights found).
  struct PartCounts {
    int found = 0, expected = 0, optional_found = 0;
  };
  std::map<WeightPart, PartCounts> parts;
  std::set<std::string> known;
  BertWeights<void> layout;
  for_each_weight(config, layout, [&](const WeightSpec& spec, const void*&) {
    known.insert(spec.name);
    PartCounts& counts = parts[spec.part];
    if (!spec.optional) ++counts.expected;
    auto it = weights.find(spec.name);
    if (it == weights.end()) return;
    ++(spec.optional ? counts.optional_found : counts.found);
    const at::Tensor& t = it->second;
    check_tensor(t, spec.name.c_str(), dtype_, static_cast<int64_t>(spec.shape.size()),
                 device_);
    TORCH_CHECK(t.sizes() == at::IntArrayRef(spec.shape), "weight '", spec.name,
                "' must have shape ", at::IntArrayRef(spec.shape), ", got ", t.sizes());
  });
  for (const auto& entry : weights) {
    TORCH_CHECK(known.count(entry.first), "unexpected weight '", entry.first, "'");
  }
  for (const auto& [part, counts] : parts) {
    TORCH_CHECK(counts.found == counts.expected ||
                    (counts.found == 0 && counts.optional_found == 0 &&
                     weight_part_is_optional(part)),
                "the weights of part '", weight_part_name(part), "' must come together: ",
                counts.found, " of its ", counts.expected, " required weights are given");
  }
  auto has = [&parts](WeightPart part) { return parts[part].found > 0; };
  TORCH_CHECK(config.embedding_dim() == config.num_hiddens ||
                  has(WeightPart::kEmbeddingProjection),
              "embedding_size ", config.embedding_size, " differs from num_hiddens ",
              config.num_hiddens, ": the embedding_project weights are needed");
  TORCH_CHECK(config.rotary() != has(WeightPart::kPositionTable),
              config.rotary() ? "rotary positions (rotary_base > 0) take no pos_embedding"
                              : "pos_embedding is needed (rotary_base is 0: absolute positions)");
  TORCH_CHECK(config.rotary() == has(WeightPart::kRotary),
              config.rotary() ? "rotary positions need the rotary_cos and rotary_sin tables"
                              : "rotary tables are given but rotary_base is 0");
  TORCH_CHECK(!has(WeightPart::kLocalRotary) || config.local_window > 0,
              "local rotary tables are given but no layer is windowed (local_window is 0)");
  TORCH_CHECK(!config.pre_norm || has(WeightPart::kFinalNorm),
              "a pre-norm encoder needs its final LayerNorm (final_ln_weight)");
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string layer = "layers." + std::to_string(i) + ".";
    const bool ln1 = weights.count(layer + "ln1_weight") > 0;
    TORCH_CHECK(ln1 || config.pre_norm, "weight '", layer,
                "ln1_weight' is needed (post-norm layers normalise after attention)");
    TORCH_CHECK(ln1 || !weights.count(layer + "ln1_bias"), "weight '", layer,
                "ln1_bias' is given without its ln1_weight");
  }
  has_embedding_norm_ = has(WeightPart::kEmbeddingNorm);
  has_nsp_ = has(WeightPart::kNsp);
  has_mlm_ = has(WeightPart::kMlm);
  weights_ = weights;
  if (device_.is_cpu()) {
    device_engine_ = make_cpu_engine(config_, weights_, dtype_, storage, cpu_plan);
  } else {
    TORCH_CHECK(device_.is_cuda(), "Engine: unsupported device ", device_);
    device_engine_ = make_cuda_engine(config_, weights_, dtype_, device_, storage);
  }
}

BatchInputs Engine::checked_inputs(const at::Tensor& tokens, const at::Tensor& segments,
                                   const at::Tensor& cu_seqlens, int64_t total_tokens,
                                   int64_t max_seqlen,
                                   const std::optional<at::Tensor>& pred_positions,
                                   bool with_nsp) const {
  const bool packed = tokens.dim() == 1;
  check_tensor(tokens, "tokens", at::kLong, packed ? 1 : 2, device_);
  check_tensor(segments, "segments", at::kLong, packed ? 1 : 2, device_);
  check_tensor(cu_seqlens, "cu_seqlens", at::kInt, 1, device_);
  TORCH_CHECK(segments.sizes() == tokens.sizes(), "segments shape ", segments.sizes(),
              " must equal tokens shape ", tokens.sizes());
  const int64_t batch = packed ? cu_seqlens.size(0) - 1 : tokens.size(0);
  const int64_t seq_len = packed ? 0 : tokens.size(1);
  const int64_t longest = packed ? config_.max_len : seq_len;
  TORCH_CHECK(batch >= 1 && tokens.numel() >= 1, "tokens must be non-empty, got ",
              tokens.sizes());
  TORCH_CHECK(cu_seqlens.size(0) == batch + 1, "cu_seqlens must have batch + 1 = ", batch + 1,
              " entries, got ", cu_seqlens.size(0));
  TORCH_CHECK(longest <= config_.max_len, "sequence length ", longest, " exceeds max_len ",
              config_.max_len);
  TORCH_CHECK(max_seqlen >= 1 && max_seqlen <= longest, "max_seqlen ", max_seqlen,
              " must be in [1, ", longest, "]");
  TORCH_CHECK(total_tokens >= 1 && total_tokens <= batch * config_.max_len, "total_tokens ",
              total_tokens, " must be in [1, batch * max_len]");
  TORCH_CHECK(!packed || tokens.size(0) == total_tokens, "packed tokens has ", tokens.size(0),
              " ids but total_tokens is ", total_tokens);
  // total_tokens, the rows to compute, is at least cu_seqlens[batch] (more is spare capacity,
  // as a CUDA-graph bucket has: rows computed on and never returned). The values can be read
  // only on the CPU; on the GPU the caller vouches for them, so that a forward never
  // synchronises.
  if (cu_seqlens.is_cpu()) {
    const HostSeqlens seqlens = checked_seqlens(cu_seqlens);
    TORCH_CHECK(seqlens.longest <= max_seqlen, "a sequence of cu_seqlens has length ",
                seqlens.longest, ", more than max_seqlen ", max_seqlen);
    TORCH_CHECK(seqlens.total_tokens >= 1 && seqlens.total_tokens <= total_tokens,
                "cu_seqlens[-1] = ", seqlens.total_tokens, " must be in [1, total_tokens=",
                total_tokens, "]");
  }
  TORCH_CHECK(!with_nsp || has_nsp_, "this model has no NSP head (pooler and classifier)");
  TORCH_CHECK(!pred_positions.has_value() || has_mlm_, "this model has no MLM head");

  BatchInputs in{};
  in.tokens = tokens.data_ptr<int64_t>();
  in.segments = segments.data_ptr<int64_t>();
  in.cu_seqlens = cu_seqlens.data_ptr<int32_t>();
  in.batch = batch;
  in.seq_len = seq_len;
  in.total_tokens = total_tokens;
  in.max_seqlen = max_seqlen;
  in.with_nsp = with_nsp;
  if (pred_positions.has_value()) {
    check_tensor(*pred_positions, "pred_positions", at::kLong, 2, device_);
    TORCH_CHECK(pred_positions->size(0) == batch, "pred_positions must have ", batch,
                " rows, got ", pred_positions->size(0));
    in.pred_positions = pred_positions->data_ptr<int64_t>();
    in.num_pred_positions = pred_positions->size(1);
  }
  return in;
}

Engine::Outputs Engine::allocate_outputs(const BatchInputs& in, bool with_encoded,
                                         bool with_mlm) const {
  const auto opts = at::TensorOptions().dtype(dtype_).device(device_);
  Outputs out;
  if (with_encoded) {
    out.encoded = in.seq_len == 0
                      ? at::empty({in.total_tokens, config_.num_hiddens}, opts)
                      : at::empty({in.batch, in.seq_len, config_.num_hiddens}, opts);
  }
  if (with_mlm) {  // pred_positions given, possibly with no positions (P = 0)
    out.mlm_logits = at::empty({in.batch, in.num_pred_positions, config_.vocab_size}, opts);
  }
  if (in.with_nsp) out.nsp_logits = at::empty({in.batch, 2}, opts);
  return out;
}

at::Tensor Engine::workspace_for(const BatchInputs& in, std::unique_lock<std::mutex>& reuse) {
  // On the CPU one workspace is kept and reused: a fresh one of this size comes from mmap,
  // and touching its new pages costs more than small layers take. A call that finds it in use
  // (another thread's forward) takes its own. CUDA's caching allocator already reuses memory.
  const auto opts = at::TensorOptions().dtype(dtype_).device(device_);
  const int64_t size = workspace_elements(config_, in);
  if (!device_.is_cpu() || !reuse.try_lock()) return at::empty({size}, opts);
  if (workspace_.numel() < size) {
    workspace_ = at::Tensor();  // free the smaller one first
    workspace_ = at::empty({size}, opts);
  }
  return workspace_;
}

Engine::Outputs Engine::forward(const at::Tensor& tokens, const at::Tensor& segments,
                                const at::Tensor& cu_seqlens, int64_t total_tokens,
                                int64_t max_seqlen,
                                const std::optional<at::Tensor>& pred_positions,
                                bool with_encoded, bool with_nsp,
                                std::function<bool()> stop_requested) {
  BatchInputs in = checked_inputs(tokens, segments, cu_seqlens, total_tokens, max_seqlen,
                                  pred_positions, with_nsp);
  in.stop_requested = std::move(stop_requested);
  const c10::DeviceGuard guard(device_);
  Outputs out = allocate_outputs(in, with_encoded, pred_positions.has_value());
  std::unique_lock<std::mutex> reuse(workspace_mutex_, std::defer_lock);
  const at::Tensor workspace = workspace_for(in, reuse);
  const bool packed = in.seq_len == 0;
  auto data = [](const std::optional<at::Tensor>& t) { return t ? t->data_ptr() : nullptr; };
  out.completed = device_engine_->forward(
      in, with_encoded && !packed ? data(out.encoded) : nullptr,
      with_encoded && packed ? data(out.encoded) : nullptr, data(out.mlm_logits),
      data(out.nsp_logits), workspace.data_ptr());
  return out;
}

}  // namespace pybert
