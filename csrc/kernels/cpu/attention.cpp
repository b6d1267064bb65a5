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
  // One task per (sequence, head); each owns its rows of `out` for that head.
  parallel_for(batch * num_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> probs(max_seqlen);
    std::vector<float> acc(head_dim);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / num_heads;
      const int64_t h = task % num_heads;
      const int64_t first = cu_seqlens[b];
      const int64_t length = cu_seqlens[b + 1] - first;
      const float* q_base = qkv + first * row_stride + h * head_dim;
      const float* k_base = q_base + hidden;
      const float* v_base = q_base + 2 * hidden;
      for (int64_t i = 0; i < length; ++i) {
        const float* q = q_base + i * row_stride;
        float max_score = -INFINITY;
        for (int64_t j = 0; j < length; ++j) {
          const float* k = k_base + j * row_stride;
          float dot = 0.0f;
          for (int64_t c = 0; c < head_dim; ++c) dot += q[c] * k[c];
          probs[j] = dot * scale;
          max_score = std::max(max_score, probs[j]);
        }
        float denom = 0.0f;
        for (int64_t j = 0; j < length; ++j) {
          probs[j] = std::exp(probs[j] - max_score);
          denom += probs[j];
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = 0; j < length; ++j) {
          const float* v = v_base + j * row_stride;
          const float p = probs[j];
          for (int64_t c = 0; c < head_dim; ++c) acc[c] += p * v[c];
        }
        float* o = out + (first + i) * hidden + h * head_dim;
        const float inv = 1.0f / denom;
        for (int64_t c = 0; c < head_dim; ++c) o[c] = acc[c] * inv;
      }
    }
  });
}

}  // namespace pybert::cpu
