// The one CPU kernel file that sees torch. The GEMMs go to ATen's addmm (MKL or oneDNN) or,
// with weights prepacked once, to MKL's packed GEMM (float) or oneDNN's own ops (bfloat16 and
// int8: AVX512-BF16, VNNI or AMX as the CPU has them, bias and activation fused; int8 with
// activations quantised per row on each call by quantize_rows_u8). Float attention goes to
// attention.cpp's batched GEMMs; bfloat16 attention, sequences beyond its limit and a torch
// without MKL go to torch's CPU flash attention. parallel_for goes to torch's thread pool.
// Everything else in kernels/cpu is plain C++.
//
// oneDNN's ops are reached through the dispatcher by name (ATen has no C++ API for them); a
// torch built without them leaves weights plain.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "kernels.h"
#include "mkl.h"
#include "parallel.h"

namespace pybert::cpu {

static_assert(sizeof(bfloat16) == sizeof(c10::BFloat16) &&
                  alignof(bfloat16) == alignof(c10::BFloat16),
              "bfloat16 must have c10::BFloat16's layout");

namespace {

template <typename T>
at::TensorOptions options_of() {
  return at::TensorOptions().dtype(std::is_same_v<T, bfloat16> ? at::kBFloat16 : at::kFloat);
}

// A tensor over memory the caller owns (const: ATen only reads it).
template <typename T>
at::Tensor wrap(const T* data, at::IntArrayRef sizes) {
  return at::from_blob(const_cast<T*>(data), sizes, options_of<T>());
}

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

// out = act(in) by torch's vectorised kernels; `in` may be `out` (in place).
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

// The largest int8 weight magnitude. With VNNI or AMX, u8 x s8 products accumulate in 32 bits;
// without them (AVX2, AVX-512F) pairs of products are added in 16 bits first, which saturates
// unless the weights keep to 7 bits (255 * 63 * 2 < 32767).
float int8_weight_limit() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool wide_accumulation = __builtin_cpu_supports("avx512vnni") ||
                                        __builtin_cpu_supports("avxvnni") ||
                                        __builtin_cpu_supports("amx-int8");
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
  PreparedWeightPtr prepared(new PreparedWeight{format, {}, {}, {}, {}, {}, {}, {}});
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
// bits with one scale per row; the GEMM applies the weights' scales, the rows' scales and the
// bias are applied after it.
void int8_gemm(const float* a, const PreparedWeight& prepared, float* out, int64_t m,
               int64_t n, int64_t k, Activation act) {
  thread_local std::vector<uint8_t> quantized;
  thread_local std::vector<float> row_scales;
  quantized.resize(static_cast<size_t>(m * k));
  row_scales.resize(static_cast<size_t>(m));
  if (!quantize_rows_u8(a, m, k, quantized.data(), row_scales.data())) {
    fail_non_finite_forward();  // quantised, an infinity would become a finite wrong answer
  }
  const at::Tensor qa = at::from_blob(quantized.data(), {m, k}, at::kByte);
  const c10::List<std::optional<at::Scalar>> no_scalars;
  const at::Tensor product = call_for_tensor(
      *onednn_ops().int8_linear,
      {qa, 1.0, int64_t(128), prepared.int8_packed, prepared.scales, prepared.zero_points,
       c10::IValue(), 1.0, int64_t(0), at::kFloat, std::string("none"), no_scalars,
       std::string("")});
  scale_rows_add_bias(product.data_ptr<float>(), row_scales.data(),
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

namespace {

// A float tensor of `sizes` with values spread over [-scale, scale) (the fractional parts of
// i times the golden ratio): operands to time a kernel on. No random generator: torch's
// inline generator arguments trip GCC's maybe-uninitialized warning under the sanitizers.
at::Tensor timing_operand(at::IntArrayRef sizes, double scale) {
  int64_t count = 1;
  for (const int64_t size : sizes) count *= size;
  return at::arange(count, at::kDouble)  // double: i * 0.618 keeps its fraction for large i
      .mul_(0.6180339887)
      .frac_()
      .sub_(0.5)
      .mul_(2.0 * scale)
      .to(at::kFloat)
      .reshape(sizes);
}

// The fastest of `repeats` runs of fn after one warm-up run (first touch, libraries' caches).
template <typename Fn>
double fastest_seconds(const Fn& fn, int repeats) {
  fn();
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < std::max(repeats, 1); ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    best = std::min(best, took.count());
  }
  return best;
}

}  // namespace

template <typename T>
std::vector<std::vector<double>> time_gemm(const std::vector<GemmPath>& paths,
                                           const std::vector<int64_t>& rows, int64_t n,
                                           int64_t k, int repeats) {
  std::vector<std::vector<double>> seconds(paths.size(), std::vector<double>(rows.size(), -1));
  if (rows.empty()) return seconds;
  const int64_t most = *std::max_element(rows.begin(), rows.end());
  const double scale = 1.0 / std::sqrt(double(k));
  const at::Tensor weight = timing_operand({n, k}, scale).to(options_of<T>());
  const at::Tensor bias = timing_operand({n}, 1.0).to(options_of<T>());
  const at::Tensor a = timing_operand({most, k}, 1.0).to(options_of<T>());
  at::Tensor out = at::empty({most, n}, options_of<T>());
  const T* w = static_cast<const T*>(weight.data_ptr());
  const T* b = static_cast<const T*>(bias.data_ptr());
  for (size_t p = 0; p < paths.size(); ++p) {
    if (!gemm_path_available<T>(paths[p])) continue;
    PreparedWeightPtr prepared;
    if (paths[p] != GemmPath::kAten) {
      const WeightStorage storage =
          paths[p] == GemmPath::kInt8 ? WeightStorage::kInt8 : WeightStorage::kPacked;
      prepared = prepare_weight(w, b, n, k, storage,
                                {{std::numeric_limits<int64_t>::max(), paths[p]}});
      if (!prepared || prepared->path_for(1) != paths[p]) continue;
    }
    for (size_t i = 0; i < rows.size(); ++i) {
      seconds[p][i] = fastest_seconds(
          [&] {
            gemm_bias_act(static_cast<const T*>(a.data_ptr()), w, b, prepared.get(),
                          static_cast<T*>(out.data_ptr()), rows[i], n, k, Activation::kNone);
          },
          repeats);
    }
  }
  return seconds;
}

namespace {

// Flash attention of `n` sequences of `length` tokens packed side by side from `qkv_rows`
// (one sequence when n == 1), written as (n, length, heads, d) into `out_rows`.
template <typename T>
void flash_attend(const T* qkv_rows, T* out_rows, int64_t n, int64_t length, int64_t num_heads,
                  int64_t head_dim, double scale) {
  const int64_t hidden = num_heads * head_dim;
  // Q, K and V as (n, heads, length, d) views into the rows.
  auto part = [&](int64_t index) {
    return at::from_blob(const_cast<T*>(qkv_rows) + index * hidden,
                         {n, num_heads, length, head_dim},
                         {length * 3 * hidden, head_dim, 3 * hidden, 1}, options_of<T>());
  };
  const at::Tensor context = std::get<0>(at::_scaled_dot_product_flash_attention_for_cpu(
      part(0), part(1), part(2), 0.0, false, std::nullopt, scale));
  // context is (n, heads, length, d); the heads go side by side in each token's row.
  at::from_blob(out_rows, {n, length, num_heads, head_dim},
                {length * hidden, hidden, head_dim, 1}, options_of<T>())
      .copy_(context.transpose(1, 2));
}

// Flash attention of the listed sequences (indices b of cu_seqlens, in increasing order).
template <typename T>
void flash_attend_sequences(const T* qkv, const int32_t* cu_seqlens, T* out,
                            const std::vector<int64_t>& sequences, int64_t max_seqlen,
                            int64_t num_heads, int64_t head_dim) {
  const int64_t hidden = num_heads * head_dim;
  const double scale = 1.0 / std::sqrt(double(head_dim));
  auto first_of = [&](int64_t b) { return int64_t(cu_seqlens[b]); };
  auto length_of = [&](int64_t b) { return int64_t(cu_seqlens[b + 1] - cu_seqlens[b]); };
  // Few sequences: one call each, spread over the threads by heads and query blocks.
  if (int64_t(sequences.size()) < 2 * at::get_num_threads()) {
    for (const int64_t b : sequences) {
      flash_attend(qkv + first_of(b) * 3 * hidden, out + first_of(b) * hidden, 1, length_of(b),
                   num_heads, head_dim, scale);
    }
    return;
  }
  // Many: the sequences of one length go to one batched call, so a call's fixed cost (~20 us,
  // the book's 512 sequences of 32-64 tokens were 20 ms a layer one by one) is paid per length.
  // Consecutive sequences of a length are already evenly spaced and are viewed in place; the
  // others' rows (one contiguous block each) are gathered into a reused buffer and scattered
  // back after.
  std::vector<std::vector<int64_t>> by_length(size_t(max_seqlen) + 1);
  for (const int64_t b : sequences) by_length[size_t(length_of(b))].push_back(b);
  thread_local std::vector<T> gathered, attended;  // the calling thread's, reused
  for (int64_t length = 1; length <= max_seqlen; ++length) {
    const std::vector<int64_t>& members = by_length[size_t(length)];
    const int64_t n = int64_t(members.size());
    if (n == 0) continue;
    const bool evenly_spaced =
        members.back() - members.front() == n - 1;  // consecutive, so `length` rows apart
    if (evenly_spaced) {
      flash_attend(qkv + first_of(members.front()) * 3 * hidden,
                   out + first_of(members.front()) * hidden, n, length, num_heads, head_dim,
                   scale);
      continue;
    }
    const int64_t qkv_block = length * 3 * hidden, out_block = length * hidden;
    // Grown, never shrunk: a resize that shrank would zero the memory again when it regrew.
    if (gathered.size() < size_t(n * qkv_block)) gathered.resize(size_t(n * qkv_block));
    if (attended.size() < size_t(n * out_block)) attended.resize(size_t(n * out_block));
    // Plain pointers into the lambdas: in a pool thread the thread_local names its own vector.
    T* const gathered_rows = gathered.data();
    T* const attended_rows = attended.data();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        std::memcpy(gathered_rows + i * qkv_block, qkv + first_of(members[i]) * 3 * hidden,
                    sizeof(T) * size_t(qkv_block));
      }
    });
    flash_attend(gathered_rows, attended_rows, n, length, num_heads, head_dim, scale);
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        std::memcpy(out + first_of(members[i]) * hidden, attended_rows + i * out_block,
                    sizeof(T) * size_t(out_block));
      }
    });
  }
}

// Where attention_windowed lays out its sequences: block is the number of queries per grid
// block, keys the key rows each block sees (block + 2 * window); sequence i's region starts at
// buffer row first_block[i] * block with `window` zero rows, its blocks, then zeros up to a
// multiple of block with at least `window` rows after the last block (its right keys).
struct WindowGrid {
  int64_t window, block, keys, grid;
  std::vector<int64_t> first_block, sequence_of_block;  // -1: a filler block between regions

  WindowGrid(const int32_t* cu_seqlens, const std::vector<int64_t>& sequences, int64_t w)
      : window(w), block(std::min<int64_t>(std::max<int64_t>(w, 32), 256)), keys(block + 2 * w) {
    const int64_t tail = (2 * window + block - 1) / block;  // filler blocks after a sequence
    int64_t next = 0;
    for (size_t i = 0; i < sequences.size(); ++i) {
      const int64_t b = sequences[i];
      const int64_t blocks = (cu_seqlens[b + 1] - cu_seqlens[b] + block - 1) / block;
      first_block.push_back(next);
      sequence_of_block.insert(sequence_of_block.end(), size_t(blocks), int64_t(i));
      sequence_of_block.insert(sequence_of_block.end(), size_t(tail), -1);
      next += blocks + tail;
    }
    grid = next;
  }
  // Sequence i's first query row of grid block g.
  int64_t first_query(int64_t g, int64_t i) const {
    return (g - first_block[size_t(i)]) * block;
  }
};

// The additive mask of grid blocks [g0, g0 + n): query r of a block sees key c when
// |(r + window) - c| <= window and the key lies inside its sequence; filler blocks see
// everything (their rows are thrown away).
template <typename T>
at::Tensor window_mask(const WindowGrid& layout, const int32_t* cu_seqlens,
                       const std::vector<int64_t>& sequences, int64_t g0, int64_t n) {
  const int64_t block = layout.block, keys = layout.keys, window = layout.window;
  at::Tensor mask = at::zeros({n, 1, block, keys}, options_of<T>());
  T* m = static_cast<T*>(mask.data_ptr());
  const T blocked = from_float<T>(-INFINITY);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t local = begin; local < end; ++local) {
      const int64_t i = layout.sequence_of_block[size_t(g0 + local)];
      if (i < 0) continue;
      const int64_t b = sequences[size_t(i)];
      const int64_t length = cu_seqlens[b + 1] - cu_seqlens[b];
      const int64_t first_query = layout.first_query(g0 + local, i);
      for (int64_t r = 0; r < block; ++r) {
        T* row = m + (local * block + r) * keys;
        for (int64_t c = 0; c < keys; ++c) {
          const int64_t key = first_query + c - window;  // its position in the sequence
          if (key < 0 || key >= length || std::abs(r + window - c) > window) row[c] = blocked;
        }
      }
    }
  });
  return mask;
}

// Sliding-window attention (|i - j| <= window) of the listed sequences, computing the band
// only: each sequence's queries go in blocks, and a block's keys are the rows around it, so
// the work is linear in the length. The sequences' rows are copied into one buffer laid out
// as WindowGrid says, so that every block's queries and keys are strided views of it; torch's
// flash attention (with window_mask) computes them a chunk of the grid at a time, the chunk's
// mask within kWindowMaskBytes (a wide window's would otherwise grow as length x window).
template <typename T>
void attention_windowed(const T* qkv, const int32_t* cu_seqlens, T* out,
                        const std::vector<int64_t>& sequences, int64_t window,
                        int64_t num_heads, int64_t head_dim) {
  constexpr int64_t kWindowMaskBytes = 32 << 20;
  const int64_t hidden = num_heads * head_dim, width = 3 * hidden;
  const WindowGrid layout(cu_seqlens, sequences, window);
  const int64_t block = layout.block, keys = layout.keys, grid = layout.grid;
  const at::TensorOptions options = options_of<T>();
  // keys - block more rows at the end: the last grid block's key view stays inside.
  at::Tensor buffer = at::zeros({grid * block + keys, width}, options);
  T* base = static_cast<T*>(buffer.data_ptr());
  at::parallel_for(0, int64_t(sequences.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = sequences[size_t(i)];
      std::memcpy(base + (layout.first_block[size_t(i)] * block + window) * width,
                  qkv + int64_t(cu_seqlens[b]) * width,
                  sizeof(T) * size_t((cu_seqlens[b + 1] - cu_seqlens[b]) * width));
    }
  });
  // Grid block g: queries at buffer rows window + g * block, keys from row g * block on.
  auto view = [&](int64_t column, int64_t first_row, int64_t count) {
    return at::from_blob(base + first_row * width + column, {grid, num_heads, count, head_dim},
                         {block * width, head_dim, width, 1}, options);
  };
  const at::Tensor q = view(0, window, block), k = view(hidden, 0, keys),
                   v = view(2 * hidden, 0, keys);
  const int64_t chunk =
      std::max<int64_t>(1, kWindowMaskBytes / (block * keys * int64_t(sizeof(T))));
  const double scale = 1.0 / std::sqrt(double(head_dim));
  for (int64_t g0 = 0; g0 < grid; g0 += chunk) {
    const int64_t n = std::min(chunk, grid - g0);
    const at::Tensor context = std::get<0>(at::_scaled_dot_product_flash_attention_for_cpu(
        q.narrow(0, g0, n), k.narrow(0, g0, n), v.narrow(0, g0, n), 0.0, false,
        window_mask<T>(layout, cu_seqlens, sequences, g0, n), scale));
    // (n, heads, block, d) -> rows (n * block, hidden); each block's real rows go to `out`.
    const at::Tensor rows = context.transpose(1, 2).contiguous();
    const T* attended = static_cast<const T*>(rows.data_ptr());
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t local = begin; local < end; ++local) {
        const int64_t i = layout.sequence_of_block[size_t(g0 + local)];
        if (i < 0) continue;
        const int64_t b = sequences[size_t(i)];
        const int64_t first_query = layout.first_query(g0 + local, i);
        const int64_t real = std::min(block, cu_seqlens[b + 1] - cu_seqlens[b] - first_query);
        std::memcpy(out + (int64_t(cu_seqlens[b]) + first_query) * hidden,
                    attended + local * block * hidden, sizeof(T) * size_t(real * hidden));
      }
    });
  }
}

}  // namespace

template <typename T>
void attention_varlen(const T* qkv, const int32_t* cu_seqlens, T* out, int64_t batch,
                      int64_t max_seqlen, int64_t num_heads, int64_t head_dim, int64_t window,
                      AttentionPath kernel, int64_t kernel_max_length) {
  if (kernel == AttentionPath::kMkl && !attention_path_available(kernel)) {
    kernel = AttentionPath::kOwn;  // a torch without MKL: the own kernel does the same work
  }
  const int64_t kernel_limit = std::is_same_v<T, float> && kernel != AttentionPath::kFlash
                                   ? std::min(kernel_max_length, kAttentionKernelMaxLength)
                                   : 0;
  // An empty slot (length 0) has nothing to attend; a sequence no longer than window + 1 sees
  // all of itself in the window.
  std::vector<int64_t> by_kernel, flashed, windowed;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t length = cu_seqlens[b + 1] - cu_seqlens[b];
    if (length > max_seqlen) throw std::invalid_argument("a sequence exceeds max_seqlen");
    if (length == 0) continue;
    if (window > 0 && length > window + 1) {
      windowed.push_back(b);
      continue;
    }
    (length <= kernel_limit ? by_kernel : flashed).push_back(b);
  }
  if (!windowed.empty()) {
    attention_windowed(qkv, cu_seqlens, out, windowed, window, num_heads, head_dim);
  }
  if constexpr (std::is_same_v<T, float>) {
    if (!by_kernel.empty()) {
      (kernel == AttentionPath::kMkl ? attention_batched : attention_tiled)(
          qkv, cu_seqlens, by_kernel.data(), int64_t(by_kernel.size()), out, num_heads,
          head_dim);
    }
  }
  if (!flashed.empty()) {
    flash_attend_sequences(qkv, cu_seqlens, out, flashed, max_seqlen, num_heads, head_dim);
  }
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

double time_attention(AttentionPath path, int64_t batch, int64_t length, int64_t num_heads,
                      int64_t head_dim, int repeats) {
  if (!attention_path_available(path)) return -1.0;
  const int64_t hidden = num_heads * head_dim;
  const at::Tensor qkv = timing_operand({batch * length, 3 * hidden}, 1.0);
  at::Tensor out = at::empty({batch * length, hidden});
  std::vector<int32_t> cu_seqlens(size_t(batch) + 1);
  for (int64_t b = 0; b <= batch; ++b) cu_seqlens[size_t(b)] = int32_t(b * length);
  return fastest_seconds(
      [&] {
        attention_varlen(qkv.data_ptr<float>(), cu_seqlens.data(), out.data_ptr<float>(),
                         batch, length, num_heads, head_dim, /*window=*/0, path, length);
      },
      repeats);
}

void parallel_for(int64_t n, int64_t grain_size,
                  const std::function<void(int64_t, int64_t)>& fn) {
  at::parallel_for(0, n, grain_size, fn);
}

#define PYBERT_INSTANTIATE(T)                                                                 \
  template bool weight_storage_supported<T>(WeightStorage);                                    \
  template bool gemm_path_available<T>(GemmPath);                                              \
  template PreparedWeightPtr prepare_weight<T>(const T*, const T*, int64_t, int64_t,         \
                                               WeightStorage, const GemmChoice&);             \
  template std::vector<std::vector<double>> time_gemm<T>(                                    \
      const std::vector<GemmPath>&, const std::vector<int64_t>&, int64_t, int64_t, int);     \
  template void gemm_bias_act<T>(const T*, const T*, const T*, const PreparedWeight*, T*,    \
                                 int64_t, int64_t, int64_t, Activation);                     \
  template void attention_varlen<T>(const T*, const int32_t*, T*, int64_t, int64_t, int64_t, \
                                    int64_t, int64_t, AttentionPath, int64_t);               \
  template void gated_activation<T>(const T*, T*, int64_t, int64_t, Activation);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cpu
