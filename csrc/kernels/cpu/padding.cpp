#include <atomic>
#include <cstring>
#include <stdexcept>

#include "kernels.h"
#include "parallel.h"
#include "simd.h"

namespace pybert::cpu {

template <typename T>
void gather_rows(const T* packed, const int32_t* cu_seqlens, const int64_t* positions, T* out,
                 int64_t batch, int64_t num_positions, int64_t hidden) {
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t p = 0; p < num_positions; ++p) {
      const int64_t pos = positions ? positions[b * num_positions + p] : 0;
      std::memcpy(out + (b * num_positions + p) * hidden,
                  packed + (cu_seqlens[b] + pos) * hidden, sizeof(T) * hidden);
    }
  }
}

template <typename T>
void unpack_padded(const T* packed, const int32_t* cu_seqlens, T* out, int64_t batch,
                   int64_t seq_len, int64_t hidden) {
  parallel_for(batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t length = cu_seqlens[b + 1] - cu_seqlens[b];
      T* dst = out + b * seq_len * hidden;
      std::memcpy(dst, packed + cu_seqlens[b] * hidden, sizeof(T) * length * hidden);
      // All-zero bits are +0.0 in float and in bfloat16.
      std::memset(dst + length * hidden, 0, sizeof(T) * (seq_len - length) * hidden);
    }
  });
}

namespace {

// Whether values[begin, end) holds a NaN or an infinity: exponent bits all ones.
PYBERT_SIMD_CLONES bool any_nonfinite(const float* __restrict values, int64_t begin,
                                      int64_t end) {
  uint32_t any = 0;
#pragma omp simd reduction(| : any)
  for (int64_t i = begin; i < end; ++i) {
    uint32_t bits;
    std::memcpy(&bits, values + i, sizeof(bits));
    any |= (bits & 0x7f800000u) == 0x7f800000u;
  }
  return any != 0;
}

PYBERT_SIMD_CLONES bool any_nonfinite(const bfloat16* __restrict values, int64_t begin,
                                      int64_t end) {
  uint32_t any = 0;
#pragma omp simd reduction(| : any)
  for (int64_t i = begin; i < end; ++i) any |= (values[i].bits & 0x7f80u) == 0x7f80u;
  return any != 0;
}

}  // namespace

void fail_non_finite_forward() {
  throw std::domain_error(
      "the forward produced NaN or infinity: the model's weights are too large for this "
      "dtype's arithmetic");
}

template <typename T>
bool all_finite(const T* values, int64_t n) {
  std::atomic<bool> finite{true};
  parallel_for(n, 1 << 16, [&](int64_t begin, int64_t end) {
    if (any_nonfinite(values, begin, end)) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

#define PYBERT_INSTANTIATE(T)                                                               \
  template void gather_rows<T>(const T*, const int32_t*, const int64_t*, T*, int64_t, int64_t, \
                               int64_t);                                                    \
  template void unpack_padded<T>(const T*, const int32_t*, T*, int64_t, int64_t, int64_t);     \
  template bool all_finite<T>(const T*, int64_t);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cpu
