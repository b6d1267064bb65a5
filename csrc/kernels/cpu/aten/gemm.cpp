// The CPU GEMM paths, through ATen: ATen's addmm (MKL or oneDNN) or, with weights prepacked
// once, MKL's packed GEMM (float) or oneDNN's own ops (bfloat16 and int8: AVX512-BF16, VNNI or
// AMX as the CPU has them, bias and activation fused; int8 with activations quantised per row
// on each call by quantize_rows_u8). Which path a weight takes at a row count is the plan's
// choice (pybert.engine.cpu_plan measures them).
//
// oneDNN's ops are reached through the dispatcher by name (ATen has no C++ API for them); a
// torch built without them leaves weights plain.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <cctype>
#include <cstdlib>

#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "../mkl.h"
#include "common.h"

namespace pybert::cpu {

namespace {

// oneDNN's ops as the dispatcher knows them; each is absent from a torch built without it.
struct OneDnnOps {
  std::optional<c10::OperatorHandle> reorder_weight;  // float/bf16 weight -> blocked layout
  std::optional<c10::OperatorHandle> linear;          // GEMM + bias + activation post-op
  std::optional<c10::OperatorHandle> int8_prepack;    // int8 weight -> blocked layout
  std::optional<c10::OperatorHandle> int8_linear;     // u8 x s8 GEMM
};

const OneDnnOps& onednn_ops() {
  static const OneDnnOps ops = [] {
    auto find = [](const char* name) {
      return c10::Dispatcher::singleton().findSchema({name, ""});
    };
    return OneDnnOps{find("mkldnn::_reorder_linear_weight"), find("mkldnn::_linear_pointwise"),
                     find("onednn::qlinear_prepack"), find("onednn::qlinear_pointwise")};
  }();
  return ops;
}

at::Tensor call_for_tensor(const c10::OperatorHandle& op, torch::jit::Stack stack) {
  op.callBoxed(&stack);
  return stack.at(0).toTensor();
}

}  // namespace

void apply_activation(at::Tensor& out, const at::Tensor& in, Activation act) {
  switch (act) {
    case Activation::kNone:
      if (!out.is_same(in)) out.copy_(in);
      break;
    case Activation::kReLU: at::relu_out(out, in); break;
    case Activation::kTanh: at::tanh_out(out, in); break;
    case Activation::kGELU: at::gelu_out(out, in); break;  // the exact (erf) form
    case Activation::kSiLU: at::silu_out(out, in); break;
  }
}

namespace {

#if defined(__x86_64__) && defined(__GNUC__)
// Whether oneDNN was told to run below AVX-512 VNNI (its ISA cap, ONEDNN_MAX_CPU_ISA or the
// older DNNL_MAX_CPU_ISA, read as oneDNN reads them). Its int8 GEMM then adds pairs of u8 x s8
// products in 16 bits whatever this CPU has: under AVX2_VNNI too, where it takes its generic
// jit GEMM (seen in ONEDNN_VERBOSE), not a VNNI kernel.
bool onednn_capped_below_vnni() {
  for (const char* name : {"ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"}) {
    const char* value = std::getenv(name);
    if (value == nullptr) continue;
    std::string isa(value);
    for (char& c : isa) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return isa == "SSE41" || isa == "AVX" || isa == "AVX2" || isa == "AVX2_VNNI" ||
           isa == "AVX2_VNNI_2" || isa == "AVX512_CORE";
  }
  return false;
}
#endif

// The largest int8 weight magnitude. Where oneDNN runs its AVX-512 VNNI or AMX kernels, u8 x s8
// products accumulate in 32 bits; elsewhere (AVX2, AVX-512F, and AVX-VNNI without AVX-512,
// as above) pairs of products are added in 16 bits first, which saturates unless the weights
// keep to 7 bits (255 * 63 * 2 < 32767). Measured with oneDNN capped on an AVX-512 VNNI CPU
// (a BERT-base-wide layer, 4 x 128, relative L2 error against float32): uncapped 0.0028; at
// AVX2 or AVX2_VNNI with 8-bit weights 0.07 and 0.044, with 7-bit weights 0.0039.
float int8_weight_limit() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool wide_accumulation = (__builtin_cpu_supports("avx512vnni") ||
                                         __builtin_cpu_supports("amx-int8")) &&
                                        !onednn_capped_below_vnni();
  return wide_accumulation ? 127.0f : 63.0f;
#else
  return 127.0f;
#endif
}

const char* post_op_name(Activation act) {
  switch (act) {
    case Activation::kNone: return "none";
    case Activation::kReLU: return "relu";
    case Activation::kTanh: return "tanh";
    case Activation::kGELU: return "gelu";
    case Activation::kSiLU: return "swish";
  }
  return "none";
}

// oneDNN's GELU post-op takes the approximation as an algorithm: "none" is the exact erf form.
c10::IValue post_op_algorithm(Activation act) {
  return act == Activation::kGELU ? c10::IValue(std::string("none")) : c10::IValue();
}

}  // namespace

class PreparedWeight {
 public:
  WeightStorage format;
  at::Tensor mkl_packed;     // kMklPacked: the weight in MKL's packed layout (float)
  at::Tensor onednn_packed;  // kOneDnnPacked: the weight in oneDNN's layout
  at::Tensor int8_packed;    // kInt8 path: the int8 weight in oneDNN's layout
  at::Tensor bias;           // T; or undefined
  at::Tensor scales;         // kInt8 path: float32 per output channel
  at::Tensor column_sums;    // kInt8 path: float32, each output channel's dequantised weights summed
  at::Tensor zero_points;    // kInt8 path: zeros (symmetric weights), as oneDNN's op takes them
  GemmChoice choice;         // the path by row count

  GemmPath path_for(int64_t m) const {
    for (const auto& [max_rows, path] : choice) {
      if (m <= max_rows) return path;
    }
    return choice.empty() ? GemmPath::kAten : choice.back().second;
  }
};

void PreparedWeightDeleter::operator()(PreparedWeight* weight) const { delete weight; }

namespace {

// Whether oneDNN can reorder a T weight on this CPU: its bfloat16 GEMM needs AVX512-BF16, AMX
// or AVX-NE-CONVERT (or AVX-512BW to emulate them) and says so only by refusing to pack. Asked
// once, on a tiny matrix.
template <typename T>
bool onednn_packs() {
  static const bool packs = [] {
    if (!at::hasMKLDNN() || !onednn_ops().reorder_weight || !onednn_ops().linear) return false;
    try {
      call_for_tensor(*onednn_ops().reorder_weight,
                      {at::zeros({16, 16}, options_of<T>()), c10::IValue()});
      return true;
    } catch (const c10::Error&) {
      return false;
    }
  }();
  return packs;
}

// The weight (n, k) prepared for `path` into `prepared`; false where this machine cannot.
template <typename T>
bool prepare_path(PreparedWeight& prepared, const T* weight, int64_t n, int64_t k,
                  GemmPath path) {
  switch (path) {
    case GemmPath::kAten: return true;
    case GemmPath::kMklPacked: {
      if constexpr (std::is_same_v<T, float>) {
        if (prepared.mkl_packed.defined()) return true;
        const size_t bytes = packed_sgemm_available() ? packed_sgemm_bytes(n, k) : 0;
        if (bytes == 0) return false;
        prepared.mkl_packed = at::empty({int64_t(bytes)}, at::kByte);
        pack_sgemm_weight(weight, n, k, prepared.mkl_packed.data_ptr());
        return true;
      }
      return false;
    }
    case GemmPath::kOneDnnPacked:
      if (!onednn_packs<T>()) return false;
      if (!prepared.onednn_packed.defined()) {
        prepared.onednn_packed = call_for_tensor(*onednn_ops().reorder_weight,
                                                 {wrap(weight, {n, k}).clone(), c10::IValue()});
      }
      return true;
    case GemmPath::kInt8: {
      if (prepared.format != WeightStorage::kInt8 || !gemm_path_available<T>(path)) return false;
      if (prepared.int8_packed.defined()) return true;
      // Symmetric per-output-channel scales: row r maps [-max|w_r|, max|w_r|] onto
      // [-limit, limit].
      const at::Tensor w = wrap(weight, {n, k}).to(at::kFloat);
      const float limit = int8_weight_limit();
      prepared.scales = (w.abs().amax(1).clamp_min(1e-30f) / limit).to(at::kFloat);
      const at::Tensor quantized =
          at::round(w / prepared.scales.unsqueeze(1)).clamp(-limit, limit).to(at::kChar);
      prepared.int8_packed =
          call_for_tensor(*onednn_ops().int8_prepack, {quantized, c10::IValue()});
      prepared.zero_points = at::zeros({n}, at::kLong);
      // What the activations' row offsets multiply in the epilogue (quantize_rows_u8).
      prepared.column_sums = (quantized.to(at::kDouble).sum(1) *
                              prepared.scales.to(at::kDouble)).to(at::kFloat);
      return true;
    }
  }
  return false;
}

// The choice an engine gets without a measured one: the prepacked form of the library this
// torch has for T up to kPackedRowsLimit rows, ATen beyond.
template <typename T>
GemmChoice default_choice(WeightStorage format) {
  if (format == WeightStorage::kInt8) {
    return {{std::numeric_limits<int64_t>::max(), GemmPath::kInt8}};
  }
  const GemmPath packed =
      std::is_same_v<T, float> ? GemmPath::kMklPacked : GemmPath::kOneDnnPacked;
  return {{kPackedRowsLimit, packed}, {std::numeric_limits<int64_t>::max(), GemmPath::kAten}};
}

}  // namespace

template <typename T>
bool weight_storage_supported(WeightStorage format) {
  switch (format) {
    case WeightStorage::kPlain: return true;
    case WeightStorage::kPacked:
      return gemm_path_available<T>(GemmPath::kMklPacked) ||
             gemm_path_available<T>(GemmPath::kOneDnnPacked);
    case WeightStorage::kInt8:
      return std::is_same_v<T, float> && at::hasMKLDNN() && onednn_ops().int8_prepack &&
             onednn_ops().int8_linear;
  }
  return false;
}

template <typename T>
bool gemm_path_available(GemmPath path) {
  switch (path) {
    case GemmPath::kAten: return true;
    case GemmPath::kMklPacked: return std::is_same_v<T, float> && packed_sgemm_available();
    case GemmPath::kOneDnnPacked: return onednn_packs<T>();
    case GemmPath::kInt8: return weight_storage_supported<T>(WeightStorage::kInt8);
  }
  return false;
}

template <typename T>
PreparedWeightPtr prepare_weight(const T* weight, const T* bias, int64_t n, int64_t k,
                                 WeightStorage format, const GemmChoice& choice) {
  if (format == WeightStorage::kPlain || !weight_storage_supported<T>(format)) return nullptr;
  PreparedWeightPtr prepared(new PreparedWeight{});  // every member empty, not listed: a new
  prepared->format = format;                           // member needs no edit here
  if (bias != nullptr) prepared->bias = wrap(bias, {n}).clone();
  prepared->choice = choice.empty() ? default_choice<T>(format) : choice;
  bool any_prepared = false;
  for (auto& [max_rows, path] : prepared->choice) {
    if (!prepare_path(*prepared, weight, n, k, path)) path = GemmPath::kAten;
    any_prepared = any_prepared || path != GemmPath::kAten;
  }
  if (!any_prepared) return nullptr;
  return prepared;
}

namespace {

// out = act(a weight^T + bias) by oneDNN's int8 GEMM: this call's activations quantised to 8
// bits with one scale and one offset per row; the GEMM applies the weights' scales, the rows'
// scales, offsets and the bias are applied after it.
void int8_gemm(const float* a, const PreparedWeight& prepared, float* out, int64_t m,
               int64_t n, int64_t k, Activation act) {
  thread_local std::vector<uint8_t> quantized;
  thread_local std::vector<float> row_scales, row_offsets;
  quantized.resize(static_cast<size_t>(m * k));
  row_scales.resize(static_cast<size_t>(m));
  row_offsets.resize(static_cast<size_t>(m));
  if (!quantize_rows_u8(a, m, k, quantized.data(), row_scales.data(), row_offsets.data())) {
    fail_non_finite_forward();  // quantised, an infinity would become a finite wrong answer
  }
  const at::Tensor qa = at::from_blob(quantized.data(), {m, k}, at::kByte);
  const c10::List<std::optional<at::Scalar>> no_scalars;
  const at::Tensor product = call_for_tensor(
      *onednn_ops().int8_linear,
      {qa, 1.0, int64_t(128), prepared.int8_packed, prepared.scales, prepared.zero_points,
       c10::IValue(), 1.0, int64_t(0), at::kFloat, std::string("none"), no_scalars,
       std::string("")});
  scale_rows_add_bias(product.data_ptr<float>(), row_scales.data(), row_offsets.data(),
                      prepared.column_sums.data_ptr<float>(),
                      prepared.bias.defined() ? prepared.bias.data_ptr<float>() : nullptr, out,
                      m, n);
  at::Tensor out_t = wrap(out, {m, n});
  apply_activation(out_t, out_t, act);
}

}  // namespace

template <typename T>
void gemm_bias_act(const T* a, const T* weight, const T* bias, const PreparedWeight* prepared,
                   T* out, int64_t m, int64_t n, int64_t k, Activation act) {
  const GemmPath path = prepared != nullptr ? prepared->path_for(m) : GemmPath::kAten;
  if (path == GemmPath::kInt8) {
    if constexpr (std::is_same_v<T, float>) return int8_gemm(a, *prepared, out, m, n, k, act);
  }
  at::Tensor out_t = wrap(out, {m, n});
  const at::Tensor a_t = wrap(a, {m, k});
  switch (path) {
    case GemmPath::kMklPacked:
      if constexpr (std::is_same_v<T, float>) {
        // MKL accumulates onto the bias, written into the output first.
        if (bias != nullptr) out_t.copy_(wrap(bias, {1, n}).expand({m, n}));
        packed_sgemm(a, prepared->mkl_packed.data_ptr(), out, m, n, k,
                     bias != nullptr ? 1.0f : 0.0f);
        apply_activation(out_t, out_t, act);
        return;
      }
      break;
    case GemmPath::kOneDnnPacked: {  // bias and activation in oneDNN's accumulators
      const c10::List<std::optional<at::Scalar>> no_scalars;
      const c10::IValue bias_value =
          prepared->bias.defined() ? c10::IValue(prepared->bias) : c10::IValue();
      out_t.copy_(call_for_tensor(*onednn_ops().linear,
                                  {a_t, prepared->onednn_packed, bias_value,
                                   std::string(post_op_name(act)), no_scalars,
                                   post_op_algorithm(act)}));
      return;
    }
    case GemmPath::kInt8:  // bfloat16 has no int8 path (prepare_path refuses it)
    case GemmPath::kAten: break;
  }
  const at::Tensor w_t = wrap(weight, {n, k});
  if (bias != nullptr) {
    at::addmm_out(out_t, wrap(bias, {n}), a_t, w_t.t());
  } else {
    at::mm_out(out_t, a_t, w_t.t());
  }
  apply_activation(out_t, out_t, act);
}

GemmPath prepared_path(const PreparedWeight& prepared, int64_t m) {
  return prepared.path_for(m);
}

template <typename T>
void gated_activation(const T* in, T* out, int64_t rows, int64_t width, Activation act) {
  if (rows == 0 || width == 0) return;
  const at::TensorOptions options = options_of<T>();
  const at::Tensor both = at::from_blob(const_cast<T*>(in), {rows, 2 * width}, options);
  at::Tensor y = at::from_blob(out, {rows, width}, options);
  apply_activation(y, both.narrow(1, 0, width), act);
  y.mul_(both.narrow(1, width, width));
}

#define PYBERT_INSTANTIATE(T)                                                                 \
  template bool weight_storage_supported<T>(WeightStorage);                                    \
  template bool gemm_path_available<T>(GemmPath);                                              \
  template PreparedWeightPtr prepare_weight<T>(const T*, const T*, int64_t, int64_t,         \
                                               WeightStorage, const GemmChoice&);             \
  template void gemm_bias_act<T>(const T*, const T*, const T*, const PreparedWeight*, T*,    \
                                 int64_t, int64_t, int64_t, Activation);                     \
  template void gated_activation<T>(const T*, T*, int64_t, int64_t, Activation);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cpu
