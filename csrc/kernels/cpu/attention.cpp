#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"
#include "parallel.h"

namespace pybert::cpu {

void attention_varlen(const float* qkv, const int32_t* cu_seqlens, float* out, int64_t batch,
                      int64_t max_seqlen, int64_t num_heads, int64_t head_dim) {
  const int64_t hidden = num_heads * head_dim;
  const int64_t row_stride = 3 * hidden;
  const float scale = 1.0f / std::sqrt(float(head_dim));
  // One task per (sequence, head): scores = Q K^T / sqrt(d) for that head's slices (a strided
  // BLAS product), a softmax per row, then out = P V straight into the head's columns.
  parallel_for(batch * num_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(max_seqlen * max_seqlen);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / num_heads;
      const int64_t h = task % num_heads;
      const int64_t first = cu_seqlens[b];
      const int64_t length = cu_seqlens[b + 1] - first;
      if (length == 0) continue;  // an empty slot of a captured batch bucket
      const float* q = qkv + first * row_stride + h * head_dim;
      const float* k = q + hidden;
      const float* v = q + 2 * hidden;
      matmul_nt(q, row_stride, k, row_stride, scores.data(), length, length, length, head_dim,
                scale);
      for (int64_t i = 0; i < length; ++i) {
        float* row = scores.data() + i * length;
        const float max_score = *std::max_element(row, row + length);
        float denom = 0.0f;
        for (int64_t j = 0; j < length; ++j) {
          row[j] = std::exp(row[j] - max_score);
          denom += row[j];
        }
        const float inv = 1.0f / denom;
        for (int64_t j = 0; j < length; ++j) row[j] *= inv;
      }
      matmul_nn(scores.data(), length, v, row_stride, out + first * hidden + h * head_dim,
                hidden, length, head_dim, length);
    }
  });
}

}  // namespace pybert::cpu
