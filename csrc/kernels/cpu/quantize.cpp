#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>

#include "kernels.h"
#include "parallel.h"
#include "simd.h"

namespace pybert::cpu {

namespace {

struct Range {
  float low = 0.0f, high = 0.0f;
  bool finite = true;
};

PYBERT_SIMD_CLONES Range range_of(const float* __restrict x, int64_t begin, int64_t end) {
  float low = 0.0f, high = 0.0f;
  uint32_t nonfinite = 0;
#pragma omp simd reduction(min : low) reduction(max : high) reduction(| : nonfinite)
  for (int64_t i = begin; i < end; ++i) {
    const float v = x[i];
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    low = std::min(low, v);
    high = std::max(high, v);
    nonfinite |= (bits & 0x7f800000u) == 0x7f800000u;  // NaN or infinity
  }
  return {low, high, nonfinite == 0};
}

PYBERT_SIMD_CLONES void quantize_range(const float* __restrict x, int64_t begin, int64_t end,
                                       float inverse, float offset, uint8_t* __restrict out) {
  for (int64_t i = begin; i < end; ++i) {
    const float v = std::min(std::max(x[i] * inverse + offset, 0.0f), 255.0f);
    out[i] = static_cast<uint8_t>(static_cast<int32_t>(v));
  }
}

}  // namespace

U8Quantization quantize_u8(const float* x, int64_t n, uint8_t* out) {
  // The range of x, widened to hold 0 so that a zero activation stays exactly zero.
  Range range;
  std::mutex merge;
  parallel_for(n, 1 << 14, [&](int64_t begin, int64_t end) {
    const Range part = range_of(x, begin, end);
    const std::lock_guard<std::mutex> lock(merge);
    range.low = std::min(range.low, part.low);
    range.high = std::max(range.high, part.high);
    range.finite = range.finite && part.finite;
  });
  if (!range.finite) return {std::nanf(""), 0};
  U8Quantization q;
  q.scale = range.high > range.low ? (range.high - range.low) / 255.0f : 1.0f;
  q.zero_point = static_cast<int32_t>(std::lround(-range.low / q.scale));
  const float inverse = 1.0f / q.scale;
  const float offset = float(q.zero_point) + 0.5f;  // + 0.5 then truncation: round to nearest
  parallel_for(n, 1 << 14, [&](int64_t begin, int64_t end) {
    quantize_range(x, begin, end, inverse, offset, out);
  });
  return q;
}

}  // namespace pybert::cpu
