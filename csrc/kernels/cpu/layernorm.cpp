#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels.h"
#include "parallel.h"
#include "simd.h"

namespace pybert::cpu {
namespace {

// row = x + residual (residual may be null), in float; returns the row's sum. One clone per
// input type, so that the bfloat16 conversions vectorise too.
template <typename T>
inline float add_rows_and_sum(const T* __restrict x, const T* __restrict residual, int64_t n,
                              float* __restrict row) {
  float total = 0.0f;
  if (residual == nullptr) {
#pragma omp simd reduction(+ : total)
    for (int64_t i = 0; i < n; ++i) {
      row[i] = to_float(x[i]);
      total += row[i];
    }
  } else {
#pragma omp simd reduction(+ : total)
    for (int64_t i = 0; i < n; ++i) {
      row[i] = to_float(x[i]) + to_float(residual[i]);
      total += row[i];
    }
  }
  return total;
}
PYBERT_SIMD_CLONES float add_rows_and_sum(const float* x, const float* residual, int64_t n,
                                          float* row) {
  return add_rows_and_sum<float>(x, residual, n, row);
}
PYBERT_SIMD_CLONES float add_rows_and_sum(const bfloat16* x, const bfloat16* residual,
                                          int64_t n, float* row) {
  return add_rows_and_sum<bfloat16>(x, residual, n, row);
}

PYBERT_SIMD_CLONES float squared_deviation_sum(const float* __restrict v, int64_t n,
                                               float mean) {
  float total = 0.0f;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) total += (v[i] - mean) * (v[i] - mean);
  return total;
}

// out = (row - mean) * rstd * gamma + beta.
template <typename T>
inline void normalize_row(const float* __restrict row, const T* __restrict gamma,
                          const T* __restrict beta, float mean, float rstd, int64_t n,
                          T* __restrict out) {
  if (beta == nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      out[i] = from_float<T>((row[i] - mean) * rstd * to_float(gamma[i]));
    }
    return;
  }
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    out[i] = from_float<T>((row[i] - mean) * rstd * to_float(gamma[i]) + to_float(beta[i]));
  }
}
PYBERT_SIMD_CLONES void normalize_row(const float* row, const float* gamma, const float* beta,
                                      float mean, float rstd, int64_t n, float* out) {
  normalize_row<float>(row, gamma, beta, mean, rstd, n, out);
}
PYBERT_SIMD_CLONES void normalize_row(const float* row, const bfloat16* gamma,
                                      const bfloat16* beta, float mean, float rstd, int64_t n,
                                      bfloat16* out) {
  normalize_row<bfloat16>(row, gamma, beta, mean, rstd, n, out);
}

std::pair<double, double> mean_and_variance_in_double(const float* v, int64_t n) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += v[i];
  const double mean = sum / double(n);
  double squares = 0.0;
  for (int64_t i = 0; i < n; ++i) squares += (v[i] - mean) * (v[i] - mean);
  return {mean, squares / double(n)};
}

// LayerNorm of `row` (float, `hidden` wide, summing to `sum`) into out.
template <typename T>
void normalize(const float* row, const T* gamma, const T* beta, T* out, int64_t hidden,
               float eps, float sum) {
  // Two passes, mean first and then the centred variance, so that a row with a large mean
  // loses no precision (the one-pass E[x^2] - E[x]^2 form cancels badly).
  float mean = sum / float(hidden);
  const float variance = squared_deviation_sum(row, hidden, mean) / float(hidden);
  float rstd = 1.0f / std::sqrt(variance + eps);
  if (!std::isfinite(mean) || !std::isfinite(variance)) {
    // Finite values beyond ~1e19 overflow the squares in float, and the row would come out
    // as beta, finite and wrong: such a row's statistics are taken in double instead (its
    // 1 / std is then small, but a float).
    const auto [mean64, variance64] = mean_and_variance_in_double(row, hidden);
    mean = float(mean64);
    rstd = float(1.0 / std::sqrt(variance64 + double(eps)));
  }
  normalize_row(row, gamma, beta, mean, rstd, hidden, out);
}

}  // namespace

template <typename T>
void add_layernorm(const T* x, const T* residual, const T* gamma, const T* beta, T* out,
                   int64_t rows, int64_t hidden, float eps) {
  parallel_for(rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(static_cast<size_t>(hidden));  // x + residual, in float
    for (int64_t r = begin; r < end; ++r) {
      const T* rr = residual ? residual + r * hidden : nullptr;
      const float sum = add_rows_and_sum(x + r * hidden, rr, hidden, row.data());
      normalize(row.data(), gamma, beta, out + r * hidden, hidden, eps, sum);
    }
  });
}

template <typename T>
void add_residual_layernorm(const T* delta, T* x, const T* gamma, const T* beta, T* normed,
                            int64_t rows, int64_t hidden, float eps) {
  parallel_for(rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(static_cast<size_t>(hidden));
    for (int64_t r = begin; r < end; ++r) {
      T* xr = x + r * hidden;
      const float sum = add_rows_and_sum(xr, delta + r * hidden, hidden, row.data());
      // The sum is rounded to T once, and the LayerNorm reads the rounded sum, as an
      // unfused x = x + delta; LN(x) in T would.
      for (int64_t i = 0; i < hidden; ++i) xr[i] = from_float<T>(row[static_cast<size_t>(i)]);
      if (gamma == nullptr) continue;
      float rounded_sum = sum;
      if constexpr (!std::is_same_v<T, float>) {
        rounded_sum = 0.0f;
        for (int64_t i = 0; i < hidden; ++i) {
          row[static_cast<size_t>(i)] = to_float(xr[i]);
          rounded_sum += row[static_cast<size_t>(i)];
        }
      }
      normalize(row.data(), gamma, beta, normed + r * hidden, hidden, eps, rounded_sum);
    }
  });
}

template void add_layernorm<float>(const float*, const float*, const float*, const float*,
                                   float*, int64_t, int64_t, float);
template void add_layernorm<bfloat16>(const bfloat16*, const bfloat16*, const bfloat16*,
                                      const bfloat16*, bfloat16*, int64_t, int64_t, float);
template void add_residual_layernorm<float>(const float*, float*, const float*, const float*,
                                            float*, int64_t, int64_t, float);
template void add_residual_layernorm<bfloat16>(const bfloat16*, bfloat16*, const bfloat16*,
                                               const bfloat16*, bfloat16*, int64_t, int64_t,
                                               float);

}  // namespace pybert::cpu
