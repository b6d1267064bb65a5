// Timing the CPU's candidates on this machine, for pybert.engine.cpu_plan: each GEMM path on a
// model's weight shapes at a few row counts, each float attention form at a few lengths. The
// fastest of a few calls after a warm-up, on operands made once (values spread over a range).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <vector>

#include "common.h"

namespace pybert::cpu {

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
      if (!prepared || prepared_path(*prepared, 1) != paths[p]) continue;
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

#define PYBERT_INSTANTIATE(T)                                                                 \
  template std::vector<std::vector<double>> time_gemm<T>(                                    \
      const std::vector<GemmPath>&, const std::vector<int64_t>&, int64_t, int64_t, int);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cpu
