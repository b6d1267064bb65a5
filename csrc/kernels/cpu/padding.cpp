#include <cstring>

#include "kernels.h"
#include "parallel.h"

namespace pybert::cpu {

void gather_rows(const float* packed, const int32_t* cu_seqlens, const int64_t* positions,
                 float* out, int64_t batch, int64_t num_positions, int64_t hidden) {
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t p = 0; p < num_positions; ++p) {
      const int64_t pos = positions ? positions[b * num_positions + p] : 0;
      std::memcpy(out + (b * num_positions + p) * hidden,
                  packed + (cu_seqlens[b] + pos) * hidden, sizeof(float) * hidden);
    }
  }
}

void unpack_padded(const float* packed, const int32_t* cu_seqlens, float* out, int64_t batch,
                   int64_t seq_len, int64_t hidden) {
  parallel_for(batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t length = cu_seqlens[b + 1] - cu_seqlens[b];
      float* dst = out + b * seq_len * hidden;
      std::memcpy(dst, packed + cu_seqlens[b] * hidden, sizeof(float) * length * hidden);
      std::memset(dst + length * hidden, 0, sizeof(float) * (seq_len - length) * hidden);
    }
  });
}

}  // namespace pybert::cpu
