#include <algorithm>

#include "kernels.h"
#include "parallel.h"

namespace pybert::cpu {

void embed_packed(const int64_t* tokens, const int64_t* segments, const int32_t* cu_seqlens,
                  const float* token_table, const float* segment_table, const float* pos_table,
                  float* out, int64_t batch, int64_t seq_len, int64_t total_tokens,
                  int64_t hidden) {
  parallel_for(total_tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      float* dst = out + row * hidden;
      if (row >= cu_seqlens[batch]) {  // spare capacity
        std::fill(dst, dst + hidden, 0.0f);
        continue;
      }
      // The sequence of this packed row: the last b with cu_seqlens[b] <= row.
      const int64_t b =
          std::upper_bound(cu_seqlens, cu_seqlens + batch + 1, row) - cu_seqlens - 1;
      const int64_t s = row - cu_seqlens[b];
      const int64_t input = seq_len > 0 ? b * seq_len + s : row;  // padded or packed ids
      const float* tok = token_table + tokens[input] * hidden;
      const float* seg = segment_table + segments[input] * hidden;
      const float* pos = pos_table + s * hidden;
      for (int64_t i = 0; i < hidden; ++i) dst[i] = tok[i] + seg[i] + pos[i];
    }
  });
}

}  // namespace pybert::cpu
