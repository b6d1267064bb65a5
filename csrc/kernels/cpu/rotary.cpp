// The position and gating kernels of modern encoders (ModernBERT, NomicBERT, GTE): rotary
// positions applied to Q and K in the packed QKV rows, and a gated FFN's act(a) * g.
#include <algorithm>
#include <cmath>

#include "kernels.h"
#include "parallel.h"

namespace pybert::cpu {

namespace {

inline float activate(float v, Activation act) {
  switch (act) {
    case Activation::kNone: return v;
    case Activation::kReLU: return v > 0.0f ? v : 0.0f;
    case Activation::kTanh: return std::tanh(v);
    case Activation::kGELU: return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
    case Activation::kSiLU: return v / (1.0f + std::exp(-v));
  }
  return v;
}

}  // namespace

template <typename T>
void rotary_qk(T* qkv, const int32_t* cu_seqlens, int64_t batch, int64_t num_heads,
               int64_t head_dim, const T* cos, const T* sin) {
  const int64_t hidden = num_heads * head_dim, half = head_dim / 2;
  const int64_t rows = cu_seqlens[batch];
  parallel_for(rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b =
          std::upper_bound(cu_seqlens, cu_seqlens + batch + 1, row) - cu_seqlens - 1;
      const int64_t s = row - cu_seqlens[b];
      const T* c = cos + s * half;
      const T* n = sin + s * half;
      // Q and K: 2 * num_heads vectors of head_dim side by side at the start of the row.
      T* vectors = qkv + row * 3 * hidden;
      for (int64_t v = 0; v < 2 * num_heads; ++v) {
        T* x = vectors + v * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = to_float(x[i]), x2 = to_float(x[i + half]);
          const float ci = to_float(c[i]), si = to_float(n[i]);
          x[i] = from_float<T>(x1 * ci - x2 * si);
          x[i + half] = from_float<T>(x2 * ci + x1 * si);
        }
      }
    }
  });
}

template <typename T>
void gated_activation(const T* in, T* out, int64_t rows, int64_t width, Activation act) {
  parallel_for(rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* a = in + r * 2 * width;
      const T* g = a + width;
      T* y = out + r * width;
      for (int64_t i = 0; i < width; ++i) {
        y[i] = from_float<T>(activate(to_float(a[i]), act) * to_float(g[i]));
      }
    }
  });
}

#define PYBERT_INSTANTIATE(T)                                                                \
  template void rotary_qk<T>(T*, const int32_t*, int64_t, int64_t, int64_t, const T*,       \
                             const T*);                                                      \
  template void gated_activation<T>(const T*, T*, int64_t, int64_t, Activation);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cpu
