#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "kernels.h"
#include "parallel.h"
#include "simd.h"

namespace pybert::cpu {

namespace {

// max |x[i]| over the row, and whether it holds a NaN or an infinity.
PYBERT_SIMD_CLONES float row_absmax(const float* __restrict x, int64_t n, bool* finite) {
  float absmax = 0.0f;
  uint32_t nonfinite = 0;
#pragma omp simd reduction(max : absmax) reduction(| : nonfinite)
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof(bits));
    absmax = std::max(absmax, std::fabs(x[i]));
    nonfinite |= (bits & 0x7f800000u) == 0x7f800000u;
  }
  *finite = nonfinite == 0;
  return absmax;
}

PYBERT_SIMD_CLONES void quantize_row(const float* __restrict x, int64_t n, float inverse,
                                     uint8_t* __restrict out) {
  for (int64_t i = 0; i < n; ++i) {
    // round(x / scale) in [-127, 127], + 128; adding 128.5 and truncating rounds to nearest
    const float v = std::min(std::max(x[i] * inverse + 128.5f, 1.0f), 255.0f);
    out[i] = static_cast<uint8_t>(static_cast<int32_t>(v));
  }
}

PYBERT_SIMD_CLONES void scale_row(const float* __restrict y, float scale,
                                  const float* __restrict bias, int64_t n,
                                  float* __restrict out) {
  if (bias != nullptr) {
    for (int64_t i = 0; i < n; ++i) out[i] = y[i] * scale + bias[i];
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = y[i] * scale;
  }
}

}  // namespace

bool quantize_rows_u8(const float* x, int64_t rows, int64_t cols, uint8_t* out,
                      float* row_scales) {
  std::atomic<bool> all_finite{true};
  parallel_for(rows, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      bool finite = true;
      const float absmax = row_absmax(x + r * cols, cols, &finite);
      if (!finite) {
        all_finite.store(false, std::memory_order_relaxed);
        continue;
      }
      const float scale = absmax > 0.0f ? absmax / 127.0f : 1.0f;
      row_scales[r] = scale;
      quantize_row(x + r * cols, cols, 1.0f / scale, out + r * cols);
    }
  });
  return all_finite.load();
}

void scale_rows_add_bias(const float* y, const float* row_scales, const float* bias,
                         float* out, int64_t rows, int64_t cols) {
  parallel_for(rows, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      scale_row(y + r * cols, row_scales[r], bias, cols, out + r * cols);
    }
  });
}

}  // namespace pybert::cpu
