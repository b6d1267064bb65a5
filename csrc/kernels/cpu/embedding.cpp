#include "kernels.h"
#include "parallel.h"

namespace pybert::cpu {

void embed_packed(const int64_t* tokens, const int64_t* segments, const int32_t* cu_seqlens,
                  const float* token_table, const float* segment_table, const float* pos_table,
                  float* out, int64_t batch, int64_t seq_len, int64_t hidden) {
  parallel_for(batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t length = cu_seqlens[b + 1] - cu_seqlens[b];
      for (int64_t s = 0; s < length; ++s) {
        const float* tok = token_table + tokens[b * seq_len + s] * hidden;
        const float* seg = segment_table + segments[b * seq_len + s] * hidden;
        const float* pos = pos_table + s * hidden;
        float* row = out + (cu_seqlens[b] + s) * hidden;
        for (int64_t i = 0; i < hidden; ++i) row[i] = tok[i] + seg[i] + pos[i];
      }
    }
  });
}

}  // namespace pybert::cpu
