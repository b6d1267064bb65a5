#include <algorithm>

#include "kernels.h"
#include "parallel.h"

namespace pybert::cpu {

template <typename T>
void embed_packed(const int64_t* tokens, const int64_t* segments, const int32_t* cu_seqlens,
                  const T* token_table, const T* segment_table, const T* pos_table, T* out,
                  int64_t batch, int64_t seq_len, int64_t total_tokens, int64_t hidden) {
  parallel_for(total_tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      T* dst = out + row * hidden;
      if (row >= cu_seqlens[batch]) {  // spare capacity
        std::fill(dst, dst + hidden, from_float<T>(0.0f));
        continue;
      }
      // The sequence of this packed row: the last b with cu_seqlens[b] <= row.
      const int64_t b =
          std::upper_bound(cu_seqlens, cu_seqlens + batch + 1, row) - cu_seqlens - 1;
      const int64_t s = row - cu_seqlens[b];
      const int64_t input = seq_len > 0 ? b * seq_len + s : row;  // padded or packed ids
      const T* tok = token_table + tokens[input] * hidden;
      const T* seg = segment_table + segments[input] * hidden;
      const T* pos = pos_table + s * hidden;
      for (int64_t i = 0; i < hidden; ++i) {
        dst[i] = from_float<T>(to_float(tok[i]) + to_float(seg[i]) + to_float(pos[i]));
      }
    }
  });
}

#define PYBERT_INSTANTIATE(T)                                                            \
  template void embed_packed<T>(const int64_t*, const int64_t*, const int32_t*, const T*, \
                                const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cpu
