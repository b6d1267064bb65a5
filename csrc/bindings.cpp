// The only place where torch and pybind11 meet the runner and the kernels.
//
// pybert._C.Engine holds the packed weights as tensors and runs one forward per call, on the
// CPU (fp32) or, in a CUDA build, on the GPU (fp32, fp16, bf16) on torch's current stream.
// torch.ops.pybert.* exposes each kernel on its own, for the kernel tests (and, with the fake
// implementations in pybert/ops.py, for torch.compile).
#include <torch/extension.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "bert/backend_cpu.h"
#include "bert/runner.h"
#include "kernels/cpu/kernels.h"

#ifdef PYBERT_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "bert/runner_cuda.h"
#include "kernels/cuda/kernels.cuh"
#endif

namespace pybert {
namespace {

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t dim,
                  const at::Device& device) {
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", c10::toString(dtype), ", got ",
              c10::toString(t.scalar_type()));
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.device() == device, name, " must be on ", device, ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::kReLU;
  if (name == "gelu") return Activation::kGELU;
  TORCH_CHECK(false, "unknown ffn_activation '", name, "' (expected 'relu' or 'gelu')");
}

// Checks cu_seqlens (int32, batch + 1) against total_tokens, the rows to compute: at least
// cu_seqlens[batch] (more is spare capacity, zeros, as a CUDA-graph bucket has; its unused
// sequence slots are empty). The values can only be read on the CPU; on the GPU the caller
// vouches for them (pybert.Engine builds them itself from validated lengths) and passes
// total_tokens, so a forward never synchronises.
int64_t checked_total_tokens(const at::Tensor& cu_seqlens, int64_t batch, int64_t max_seqlen,
                             int64_t total_tokens) {
  check_tensor(cu_seqlens, "cu_seqlens", at::kInt, 1, cu_seqlens.device());
  TORCH_CHECK(cu_seqlens.size(0) == batch + 1, "cu_seqlens must have batch + 1 = ", batch + 1,
              " entries, got ", cu_seqlens.size(0));
  TORCH_CHECK(total_tokens >= 1 && total_tokens <= batch * max_seqlen, "total_tokens ",
              total_tokens, " must be in [1, batch * max_seqlen]");
  if (cu_seqlens.is_cpu()) {
    const int32_t* cu = cu_seqlens.data_ptr<int32_t>();
    TORCH_CHECK(cu[0] == 0, "cu_seqlens must start at 0");
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t length = cu[b + 1] - cu[b];
      TORCH_CHECK(length >= 0 && length <= max_seqlen, "sequence ", b, " has length ", length,
                  ", expected 0..max_seqlen=", max_seqlen);
    }
    TORCH_CHECK(cu[batch] >= 1 && cu[batch] <= total_tokens, "cu_seqlens[-1] = ", cu[batch],
                " must be in [1, total_tokens=", total_tokens, "]");
  }
  return total_tokens;
}

// Calls fn(T{}) with the C++ scalar type the kernels use for `dtype` on `device`.
template <typename Fn>
void dispatch_scalar(at::ScalarType dtype, const at::Device& device, const char* what,
                     Fn&& fn) {
  if (device.is_cpu()) {
    TORCH_CHECK(dtype == at::kFloat, what, ": the CPU kernels compute in float32, got ",
                c10::toString(dtype));
    fn(float{});
    return;
  }
#ifdef PYBERT_WITH_CUDA
  TORCH_CHECK(device.is_cuda(), what, ": unsupported device ", device);
  switch (dtype) {
    case at::kFloat: fn(float{}); return;
    case at::kHalf: fn(__half{}); return;
    case at::kBFloat16: fn(__nv_bfloat16{}); return;
    default: TORCH_CHECK(false, what, ": dtype must be float32, float16 or bfloat16, got ",
                         c10::toString(dtype));
  }
#else
  TORCH_CHECK(false, what, ": this build of pybert has no CUDA kernels (device ", device, ")");
#endif
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

template <typename T>
const T* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? reinterpret_cast<const T*>(t->data_ptr()) : nullptr;
}

#ifdef PYBERT_WITH_CUDA
// cuBLASLt workspace size: enough for the split-K kernels of large GEMMs.
constexpr int64_t kGemmWorkspaceBytes = 32 << 20;

// The GEMM runner that torch.ops.pybert.gemm_bias_act uses on each device (the Engine has its
// own). Created on first use; lives for the process.
cuda::CublasLtGemm& op_gemm(const at::Device& device) {
  static std::mutex mutex;
  static std::unordered_map<int, std::unique_ptr<cuda::CublasLtGemm>> per_device;
  std::lock_guard<std::mutex> lock(mutex);
  auto& gemm = per_device[device.index()];
  if (!gemm) gemm = std::make_unique<cuda::CublasLtGemm>(kGemmWorkspaceBytes);
  return *gemm;
}

// cuBLASLt's workspace for one forward or one op: stream-ordered memory from torch's caching
// allocator, so concurrent calls on different streams never share it.
at::Tensor gemm_workspace(const at::Device& device) {
  return at::empty({kGemmWorkspaceBytes}, at::TensorOptions().dtype(at::kByte).device(device));
}
#endif

// Runs the C++ scalar type's copy of the weight table.
template <typename T>
BertWeights<T> typed(const BertWeights<void>& w) {
  auto c = [](const void* p) { return static_cast<const T*>(p); };
  BertWeights<T> out{};
  out.token_embedding = c(w.token_embedding);
  out.segment_embedding = c(w.segment_embedding);
  out.pos_embedding = c(w.pos_embedding);
  out.embedding_ln_weight = c(w.embedding_ln_weight);
  out.embedding_ln_bias = c(w.embedding_ln_bias);
  for (const auto& l : w.layers) {
    out.layers.push_back(BertLayerWeights<T>{
        c(l.qkv_weight), c(l.qkv_bias), c(l.out_weight), c(l.out_bias), c(l.ln1_weight),
        c(l.ln1_bias), c(l.ffn1_weight), c(l.ffn1_bias), c(l.ffn2_weight), c(l.ffn2_bias),
        c(l.ln2_weight), c(l.ln2_bias)});
  }
  out.pooler_weight = c(w.pooler_weight);
  out.pooler_bias = c(w.pooler_bias);
  out.nsp_weight = c(w.nsp_weight);
  out.nsp_bias = c(w.nsp_bias);
  out.mlm_dense_weight = c(w.mlm_dense_weight);
  out.mlm_dense_bias = c(w.mlm_dense_bias);
  out.mlm_ln_weight = c(w.mlm_ln_weight);
  out.mlm_ln_bias = c(w.mlm_ln_bias);
  out.mlm_decoder_weight = c(w.mlm_decoder_weight);
  out.mlm_decoder_bias = c(w.mlm_decoder_bias);
  return out;
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
    config_.mlm_activation = parse_activation(config["mlm_activation"].cast<std::string>());
    TORCH_CHECK(config_.num_heads > 0 && config_.num_hiddens % config_.num_heads == 0,
                "num_hiddens (", config_.num_hiddens, ") must be a multiple of num_heads (",
                config_.num_heads, ")");
    auto first = weights.find("token_embedding");
    TORCH_CHECK(first != weights.end(), "missing weight 'token_embedding'");
    device_ = first->second.device();
    dtype_ = first->second.scalar_type();
    dispatch_scalar(dtype_, device_, "Engine", [](auto) {});  // rejects what cannot run

    const int64_t v = config_.vocab_size, h = config_.num_hiddens, f = config_.ffn_num_hiddens;
    auto take = [&](const std::string& name, std::vector<int64_t> shape) -> const void* {
      auto it = weights.find(name);
      TORCH_CHECK(it != weights.end(), "missing weight '", name, "'");
      const at::Tensor& t = it->second;
      check_tensor(t, name.c_str(), dtype_, static_cast<int64_t>(shape.size()), device_);
      TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "weight '", name, "' must have shape ",
                  at::IntArrayRef(shape), ", got ", t.sizes());
      held_.push_back(t);
      return t.data_ptr();
    };
    // An optional part: all of its weights or none of them.
    auto has = [&](std::initializer_list<const char*> names) {
      size_t found = 0;
      for (const char* name : names) found += weights.count(name);
      TORCH_CHECK(found == 0 || found == names.size(), "weights of one part must come "
                  "together: ", *names.begin(), " and its siblings are partly missing");
      return found != 0;
    };
    weights_.token_embedding = take("token_embedding", {v, h});
    weights_.segment_embedding = take("segment_embedding", {2, h});
    weights_.pos_embedding = take("pos_embedding", {config_.max_len, h});
    if (has({"embedding_ln_weight", "embedding_ln_bias"})) {
      weights_.embedding_ln_weight = take("embedding_ln_weight", {h});
      weights_.embedding_ln_bias = take("embedding_ln_bias", {h});
    }
    for (int64_t i = 0; i < config_.num_layers; ++i) {
      const std::string p = "layers." + std::to_string(i) + ".";
      weights_.layers.push_back(BertLayerWeights<void>{
          take(p + "qkv_weight", {3 * h, h}), take(p + "qkv_bias", {3 * h}),
          take(p + "out_weight", {h, h}), take(p + "out_bias", {h}),
          take(p + "ln1_weight", {h}), take(p + "ln1_bias", {h}),
          take(p + "ffn1_weight", {f, h}), take(p + "ffn1_bias", {f}),
          take(p + "ffn2_weight", {h, f}), take(p + "ffn2_bias", {h}),
          take(p + "ln2_weight", {h}), take(p + "ln2_bias", {h})});
    }
    has_nsp_ = has({"pooler_weight", "pooler_bias", "nsp_weight", "nsp_bias"});
    if (has_nsp_) {
      weights_.pooler_weight = take("pooler_weight", {h, h});
      weights_.pooler_bias = take("pooler_bias", {h});
      weights_.nsp_weight = take("nsp_weight", {2, h});
      weights_.nsp_bias = take("nsp_bias", {2});
    }
    has_mlm_ = has({"mlm_dense_weight", "mlm_dense_bias", "mlm_ln_weight", "mlm_ln_bias",
                    "mlm_decoder_weight", "mlm_decoder_bias"});
    if (has_mlm_) {
      weights_.mlm_dense_weight = take("mlm_dense_weight", {h, h});
      weights_.mlm_dense_bias = take("mlm_dense_bias", {h});
      weights_.mlm_ln_weight = take("mlm_ln_weight", {h});
      weights_.mlm_ln_bias = take("mlm_ln_bias", {h});
      weights_.mlm_decoder_weight = take("mlm_decoder_weight", {v, h});
      weights_.mlm_decoder_bias = take("mlm_decoder_bias", {v});
    }
#ifdef PYBERT_WITH_CUDA
    if (device_.is_cuda()) {
      c10::cuda::CUDAGuard guard(device_);
      gemm_ = std::make_unique<cuda::CublasLtGemm>(kGemmWorkspaceBytes);
    }
#endif
  }

  bool has_nsp() const { return has_nsp_; }
  bool has_mlm() const { return has_mlm_; }

  // Returns (encoded, mlm_logits (B, P, V) or None, nsp_logits (B, 2) or None). tokens and
  // segments are padded (B, S), giving encoded (B, S, H), or packed (total_tokens), giving
  // encoded (total_tokens, H). The caller (pybert.Engine) has validated ids, lengths and
  // positions; the checks here keep a wrong call from reading out of bounds where they can be
  // made without a sync.
  std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>>
  forward(const at::Tensor& tokens, const at::Tensor& segments, const at::Tensor& cu_seqlens,
          int64_t total_tokens, int64_t max_seqlen,
          const std::optional<at::Tensor>& pred_positions, bool with_encoded, bool with_nsp) {
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
    TORCH_CHECK(longest <= config_.max_len, "sequence length ", longest, " exceeds max_len ",
                config_.max_len);
    TORCH_CHECK(max_seqlen >= 1 && max_seqlen <= longest, "max_seqlen ", max_seqlen,
                " must be in [1, ", longest, "]");
    TORCH_CHECK(!packed || tokens.size(0) == total_tokens, "packed tokens has ",
                tokens.size(0), " ids but total_tokens is ", total_tokens);

    BatchInputs in{};
    in.tokens = tokens.data_ptr<int64_t>();
    in.segments = segments.data_ptr<int64_t>();
    in.cu_seqlens = cu_seqlens.data_ptr<int32_t>();
    in.batch = batch;
    in.seq_len = seq_len;
    in.total_tokens = checked_total_tokens(cu_seqlens, batch, max_seqlen, total_tokens);
    in.max_seqlen = max_seqlen;
    TORCH_CHECK(!with_nsp || has_nsp_, "this model has no NSP head (pooler and classifier)");
    TORCH_CHECK(!pred_positions.has_value() || has_mlm_, "this model has no MLM head");
    in.with_nsp = with_nsp;
    if (pred_positions.has_value()) {
      check_tensor(*pred_positions, "pred_positions", at::kLong, 2, device_);
      TORCH_CHECK(pred_positions->size(0) == batch, "pred_positions must have ", batch,
                  " rows, got ", pred_positions->size(0));
      in.pred_positions = pred_positions->data_ptr<int64_t>();
      in.num_pred_positions = pred_positions->size(1);
    }

    const auto opts = at::TensorOptions().dtype(dtype_).device(device_);
    std::optional<at::Tensor> encoded, mlm_logits, nsp_logits;
    if (with_encoded) {
      encoded = packed ? at::empty({total_tokens, config_.num_hiddens}, opts)
                       : at::empty({batch, seq_len, config_.num_hiddens}, opts);
    }
    if (pred_positions.has_value()) {
      mlm_logits = at::empty({batch, in.num_pred_positions, config_.vocab_size}, opts);
    }
    if (with_nsp) nsp_logits = at::empty({batch, 2}, opts);
    at::Tensor workspace = at::empty({workspace_elements(config_, in)}, opts);

    dispatch_scalar(dtype_, device_, "Engine.forward", [&](auto tag) {
      using T = decltype(tag);
      BatchOutputs<T> out{};
      out.encoded = encoded && !packed ? ptr<T>(*encoded) : nullptr;
      out.encoded_packed = encoded && packed ? ptr<T>(*encoded) : nullptr;
      out.mlm_logits = mlm_logits ? ptr<T>(*mlm_logits) : nullptr;
      out.nsp_logits = nsp_logits ? ptr<T>(*nsp_logits) : nullptr;
      run(typed<T>(weights_), in, out, ptr<T>(workspace));
    });
    return {encoded, mlm_logits, nsp_logits};
  }

 private:
  template <typename T>
  void run(const BertWeights<T>& w, const BatchInputs& in, const BatchOutputs<T>& out,
           T* workspace) {
    if constexpr (std::is_same<T, float>::value) {
      if (device_.is_cpu()) {
        CpuBackend backend;
        bert_forward(backend, config_, w, in, out, workspace);
        return;
      }
    }
#ifdef PYBERT_WITH_CUDA
    c10::cuda::CUDAGuard guard(device_);
    const at::Tensor gemm_scratch = gemm_workspace(device_);
    bert_forward_cuda<T>(config_, w, in, out, workspace, *gemm_, gemm_scratch.data_ptr(),
                         c10::cuda::getCurrentCUDAStream(device_.index()).stream());
#endif
  }

  BertConfig config_;
  at::Device device_{at::kCPU};
  at::ScalarType dtype_ = at::kFloat;
  BertWeights<void> weights_{};
  bool has_nsp_ = false, has_mlm_ = false;
  std::vector<at::Tensor> held_;  // keeps the weight storage alive behind weights_' pointers
#ifdef PYBERT_WITH_CUDA
  std::unique_ptr<cuda::CublasLtGemm> gemm_;
#endif
};

// ---------------------------------------------------------------------------------------------
// Single kernels as torch ops, one function per op for every device: the CPU kernels in fp32,
// the CUDA kernels in fp32, fp16 and bf16.

at::Tensor gemm_bias_act_op(const at::Tensor& a, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t activation) {
  const auto device = a.device();
  check_tensor(a, "a", a.scalar_type(), 2, device);
  check_tensor(weight, "weight", a.scalar_type(), 2, device);
  TORCH_CHECK(a.size(1) == weight.size(1), "a (", a.sizes(), ") and weight (", weight.sizes(),
              ") disagree on the inner dimension");
  TORCH_CHECK(activation >= 0 && activation <= 3, "activation must be 0..3, got ", activation);
  if (bias.has_value()) {
    check_tensor(*bias, "bias", a.scalar_type(), 1, device);
    TORCH_CHECK(bias->size(0) == weight.size(0), "bias must have ", weight.size(0), " entries");
  }
  at::Tensor out = at::empty({a.size(0), weight.size(0)}, a.options());
  const auto act = static_cast<Activation>(activation);
  dispatch_scalar(a.scalar_type(), device, "gemm_bias_act", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same<T, float>::value) {
      if (device.is_cpu()) {
        cpu::gemm_bias_act(ptr<float>(a), ptr<float>(weight), ptr_or_null<float>(bias),
                           ptr<float>(out), a.size(0), weight.size(0), a.size(1), act);
        return;
      }
    }
#ifdef PYBERT_WITH_CUDA
    c10::cuda::CUDAGuard guard(device);
    const at::Tensor scratch = gemm_workspace(device);
    op_gemm(device).run(ptr<T>(a), ptr<T>(weight), ptr_or_null<T>(bias), ptr<T>(out),
                        a.size(0), weight.size(0), a.size(1), act, scratch.data_ptr(),
                        c10::cuda::getCurrentCUDAStream().stream());
#endif
  });
  return out;
}

// Runs `cpu_fn()` on the CPU or `cuda_fn(T{}, stream)` on the GPU for the tensor's dtype.
template <typename CpuFn, typename CudaFn>
void run_kernel(const at::Tensor& like, const char* what, CpuFn&& cpu_fn, CudaFn&& cuda_fn) {
  dispatch_scalar(like.scalar_type(), like.device(), what, [&](auto tag) {
    if (like.is_cpu()) {
      cpu_fn();
      return;
    }
#ifdef PYBERT_WITH_CUDA
    c10::cuda::CUDAGuard guard(like.device());
    cuda_fn(tag, c10::cuda::getCurrentCUDAStream().stream());
#else
    (void)tag;
#endif
  });
}

// Checks ids on the host (a copy for GPU tensors): kernel tests may sync, the Engine never does.
void check_ids(const at::Tensor& ids, int64_t upper, const char* what) {
  if (ids.numel() == 0) return;
  const at::Tensor host = ids.cpu();
  TORCH_CHECK(host.min().item<int64_t>() >= 0 && host.max().item<int64_t>() < upper, what,
              " out of range");
}

int64_t host_total_tokens(const at::Tensor& cu_seqlens, int64_t batch, int64_t max_seqlen) {
  const at::Tensor host = cu_seqlens.cpu();
  TORCH_CHECK(host.scalar_type() == at::kInt && host.dim() == 1 && host.size(0) == batch + 1,
              "cu_seqlens must be int32 of batch + 1 = ", batch + 1, " entries");
  return checked_total_tokens(host, batch, max_seqlen, host.data_ptr<int32_t>()[batch]);
}

at::Tensor embed_packed_op(const at::Tensor& tokens, const at::Tensor& segments,
                           const at::Tensor& cu_seqlens, int64_t total_tokens,
                           const at::Tensor& token_table, const at::Tensor& segment_table,
                           const at::Tensor& pos_table) {
  const auto device = token_table.device();
  const auto dtype = token_table.scalar_type();
  check_tensor(tokens, "tokens", at::kLong, 2, device);
  check_tensor(segments, "segments", at::kLong, 2, device);
  check_tensor(cu_seqlens, "cu_seqlens", at::kInt, 1, device);
  check_tensor(token_table, "token_table", dtype, 2, device);
  check_tensor(segment_table, "segment_table", dtype, 2, device);
  check_tensor(pos_table, "pos_table", dtype, 2, device);
  const int64_t batch = tokens.size(0), seq_len = tokens.size(1), hidden = token_table.size(1);
  TORCH_CHECK(segments.sizes() == tokens.sizes(), "segments must have the shape of tokens");
  TORCH_CHECK(pos_table.size(0) >= seq_len, "pos_table has ", pos_table.size(0),
              " rows, fewer than seq_len ", seq_len);
  TORCH_CHECK(host_total_tokens(cu_seqlens, batch, seq_len) == total_tokens,
              "total_tokens must equal cu_seqlens[-1]");
  check_ids(tokens, token_table.size(0), "tokens");
  check_ids(segments, 2, "segments");
  at::Tensor out = at::empty({total_tokens, hidden}, token_table.options());
  run_kernel(
      out, "embed_packed",
      [&] {
        cpu::embed_packed(tokens.data_ptr<int64_t>(), segments.data_ptr<int64_t>(),
                          cu_seqlens.data_ptr<int32_t>(), ptr<float>(token_table),
                          ptr<float>(segment_table), ptr<float>(pos_table), ptr<float>(out),
                          batch, seq_len, total_tokens, hidden);
      },
      [&](auto tag, auto stream) {
#ifdef PYBERT_WITH_CUDA
        using T = decltype(tag);
        cuda::embed_packed(tokens.data_ptr<int64_t>(), segments.data_ptr<int64_t>(),
                           cu_seqlens.data_ptr<int32_t>(), ptr<T>(token_table),
                           ptr<T>(segment_table), ptr<T>(pos_table), ptr<T>(out), batch,
                           seq_len, total_tokens, hidden, stream);
#endif
      });
  return out;
}

at::Tensor add_layernorm_op(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                            const at::Tensor& weight, const at::Tensor& bias, double eps) {
  const auto device = x.device();
  const auto dtype = x.scalar_type();
  check_tensor(x, "x", dtype, 2, device);
  check_tensor(weight, "weight", dtype, 1, device);
  check_tensor(bias, "bias", dtype, 1, device);
  TORCH_CHECK(weight.size(0) == x.size(1) && bias.size(0) == x.size(1),
              "weight and bias must have ", x.size(1), " entries");
  if (residual.has_value()) {
    check_tensor(*residual, "residual", dtype, 2, device);
    TORCH_CHECK(residual->sizes() == x.sizes(), "residual must have the shape of x");
  }
  at::Tensor out = at::empty_like(x);
  run_kernel(
      x, "add_layernorm",
      [&] {
        cpu::add_layernorm(ptr<float>(x), ptr_or_null<float>(residual), ptr<float>(weight),
                           ptr<float>(bias), ptr<float>(out), x.size(0), x.size(1),
                           static_cast<float>(eps));
      },
      [&](auto tag, auto stream) {
#ifdef PYBERT_WITH_CUDA
        using T = decltype(tag);
        cuda::add_layernorm(ptr<T>(x), ptr_or_null<T>(residual), ptr<T>(weight), ptr<T>(bias),
                            ptr<T>(out), x.size(0), x.size(1), static_cast<float>(eps),
                            stream);
#endif
      });
  return out;
}

at::Tensor attention_varlen_op(const at::Tensor& qkv, const at::Tensor& cu_seqlens,
                               int64_t max_seqlen, int64_t num_heads) {
  check_tensor(qkv, "qkv", qkv.scalar_type(), 2, qkv.device());
  check_tensor(cu_seqlens, "cu_seqlens", at::kInt, 1, qkv.device());
  TORCH_CHECK(num_heads >= 1 && qkv.size(1) % (3 * num_heads) == 0, "qkv width ", qkv.size(1),
              " must be 3 * num_heads * head_dim");
  const int64_t batch = cu_seqlens.size(0) - 1;
  TORCH_CHECK(host_total_tokens(cu_seqlens, batch, max_seqlen) == qkv.size(0),
              "qkv must have cu_seqlens[-1] rows");
  const int64_t hidden = qkv.size(1) / 3;
  at::Tensor out = at::empty({qkv.size(0), hidden}, qkv.options());
  run_kernel(
      qkv, "attention_varlen",
      [&] {
        cpu::attention_varlen(ptr<float>(qkv), cu_seqlens.data_ptr<int32_t>(), ptr<float>(out),
                              batch, max_seqlen, num_heads, hidden / num_heads);
      },
      [&](auto tag, auto stream) {
#ifdef PYBERT_WITH_CUDA
        using T = decltype(tag);
        cuda::attention_varlen(ptr<T>(qkv), cu_seqlens.data_ptr<int32_t>(), ptr<T>(out), batch,
                               max_seqlen, num_heads, hidden / num_heads, stream);
#endif
      });
  return out;
}

at::Tensor gather_rows_op(const at::Tensor& packed, const at::Tensor& cu_seqlens,
                          const std::optional<at::Tensor>& positions) {
  check_tensor(packed, "packed", packed.scalar_type(), 2, packed.device());
  check_tensor(cu_seqlens, "cu_seqlens", at::kInt, 1, packed.device());
  const int64_t batch = cu_seqlens.size(0) - 1;
  TORCH_CHECK(host_total_tokens(cu_seqlens, batch, packed.size(0)) == packed.size(0),
              "packed must have cu_seqlens[-1] rows");
  int64_t num_positions = 1;
  if (positions.has_value()) {
    check_tensor(*positions, "positions", at::kLong, 2, packed.device());
    TORCH_CHECK(positions->size(0) == batch, "positions must have ", batch, " rows");
    num_positions = positions->size(1);
    const at::Tensor cu = cu_seqlens.cpu(), pos = positions->cpu();
    const int32_t* c = cu.data_ptr<int32_t>();
    const int64_t* p = pos.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t j = 0; j < num_positions; ++j)
        TORCH_CHECK(p[b * num_positions + j] >= 0 &&
                        p[b * num_positions + j] < c[b + 1] - c[b],
                    "positions[", b, ", ", j, "] is outside sequence ", b);
  }
  at::Tensor out = at::empty({batch * num_positions, packed.size(1)}, packed.options());
  const int64_t* pos_ptr = positions.has_value() ? positions->data_ptr<int64_t>() : nullptr;
  run_kernel(
      packed, "gather_rows",
      [&] {
        cpu::gather_rows(ptr<float>(packed), cu_seqlens.data_ptr<int32_t>(), pos_ptr,
                         ptr<float>(out), batch, num_positions, packed.size(1));
      },
      [&](auto tag, auto stream) {
#ifdef PYBERT_WITH_CUDA
        using T = decltype(tag);
        cuda::gather_rows(ptr<T>(packed), cu_seqlens.data_ptr<int32_t>(), pos_ptr, ptr<T>(out),
                          batch, num_positions, packed.size(1), stream);
#endif
      });
  return out;
}

at::Tensor unpack_padded_op(const at::Tensor& packed, const at::Tensor& cu_seqlens,
                            int64_t seq_len) {
  check_tensor(packed, "packed", packed.scalar_type(), 2, packed.device());
  check_tensor(cu_seqlens, "cu_seqlens", at::kInt, 1, packed.device());
  const int64_t batch = cu_seqlens.size(0) - 1;
  TORCH_CHECK(host_total_tokens(cu_seqlens, batch, seq_len) == packed.size(0),
              "packed must have cu_seqlens[-1] rows");
  at::Tensor out = at::empty({batch, seq_len, packed.size(1)}, packed.options());
  run_kernel(
      packed, "unpack_padded",
      [&] {
        cpu::unpack_padded(ptr<float>(packed), cu_seqlens.data_ptr<int32_t>(), ptr<float>(out),
                           batch, seq_len, packed.size(1));
      },
      [&](auto tag, auto stream) {
#ifdef PYBERT_WITH_CUDA
        using T = decltype(tag);
        cuda::unpack_padded(ptr<T>(packed), cu_seqlens.data_ptr<int32_t>(), ptr<T>(out), batch,
                            seq_len, packed.size(1), stream);
#endif
      });
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

#define PYBERT_REGISTER_KERNELS(m)                         \
  m.impl("gemm_bias_act", &pybert::gemm_bias_act_op);       \
  m.impl("embed_packed", &pybert::embed_packed_op);         \
  m.impl("add_layernorm", &pybert::add_layernorm_op);       \
  m.impl("attention_varlen", &pybert::attention_varlen_op); \
  m.impl("gather_rows", &pybert::gather_rows_op);           \
  m.impl("unpack_padded", &pybert::unpack_padded_op);

TORCH_LIBRARY_IMPL(pybert, CPU, m) { PYBERT_REGISTER_KERNELS(m) }
#ifdef PYBERT_WITH_CUDA
TORCH_LIBRARY_IMPL(pybert, CUDA, m) { PYBERT_REGISTER_KERNELS(m) }
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "pybert's C++/CUDA engine (see pybert.Engine for the Python API)";
#ifdef PYBERT_WITH_CUDA
  m.attr("cuda_available") = true;
#else
  m.attr("cuda_available") = false;
#endif
  py::class_<pybert::Engine>(m, "Engine")
      .def_property_readonly("has_nsp", &pybert::Engine::has_nsp)
      .def_property_readonly("has_mlm", &pybert::Engine::has_mlm)
      .def(py::init<const py::dict&, const std::unordered_map<std::string, at::Tensor>&>(),
           py::arg("config"), py::arg("weights"))
      .def("forward", &pybert::Engine::forward, py::arg("tokens"), py::arg("segments"),
           py::arg("cu_seqlens"), py::arg("total_tokens"), py::arg("max_seqlen"),
           py::arg("pred_positions"), py::arg("with_encoded") = true,
           py::arg("with_nsp") = true, py::call_guard<py::gil_scoped_release>());
}
