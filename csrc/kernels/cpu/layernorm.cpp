#include <cmath>

#include "kernels.h"
#include "parallel.h"

namespace pybert::cpu {

void add_layernorm(const float* x, const float* residual, const float* gamma, const float* beta,
                   float* out, int64_t rows, int64_t hidden, float eps) {
  parallel_for(rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x + r * hidden;
      const float* rr = residual ? residual + r * hidden : nullptr;
      float* yr = out + r * hidden;
      // Two passes in double: mean first, then the centred variance, so rows with a large
      // mean lose no precision (the one-pass E[x^2] - E[x]^2 form cancels badly).
      double sum = 0.0;
      for (int64_t i = 0; i < hidden; ++i) sum += double(xr[i]) + (rr ? double(rr[i]) : 0.0);
      const double mean = sum / double(hidden);
      double sq = 0.0;
      for (int64_t i = 0; i < hidden; ++i) {
        const double c = double(xr[i]) + (rr ? double(rr[i]) : 0.0) - mean;
        sq += c * c;
      }
      const double rstd = 1.0 / std::sqrt(sq / double(hidden) + double(eps));
      for (int64_t i = 0; i < hidden; ++i) {
        const double c = double(xr[i]) + (rr ? double(rr[i]) : 0.0) - mean;
        yr[i] = float(c * rstd) * gamma[i] + beta[i];
      }
    }
  });
}

}  // namespace pybert::cpu
