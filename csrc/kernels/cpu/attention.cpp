// Attention in float as batched GEMMs: for each (sequence, head), with L its length,
//   S = Q K^T / sqrt(d)  (L x L),  P = softmax over each row of S,  O = P V  (L x d),
// the products of many (sequence, head) pairs going to the BLAS in one batched call. Torch's
// flash attention pays ~15 us of fixed cost per (sequence, head), most of the time at the
// book's 32-64 tokens (measured: benchmarks/RESULTS.md); here the fixed cost is paid per chunk.
// Q, K and V are read in place from the packed QKV rows and O is written in place into the
// output rows (the BLAS takes row strides); S lives in a per-thread buffer sized to stay in L2.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"
#include "mkl.h"
#include "parallel.h"
#include "simd.h"

namespace pybert::cpu {
namespace {

constexpr int64_t kLanes = 16;                 // a score row's stride is a multiple of this
constexpr int64_t kChunkScores = 64 * 1024;    // floats of S per thread and round: 256 KB

int64_t row_stride(int64_t length) { return (length + kLanes - 1) / kLanes * kLanes; }

// e^x for x <= 0, within 2 ulp (Cephes' expf: x = n ln 2 + f, |f| <= ln 2 / 2, a degree-6
// polynomial for e^f, 2^n built in the exponent bits); 0 below -80, where e^x < 2e-35 no
// longer moves a softmax denominator of at least 1. Plain arithmetic, so that the loops
// below vectorise without -ffast-math.
inline float exp_nonpositive(float x) {
  const bool negligible = x < -80.0f;
  x = negligible ? -80.0f : x;
  const float shifted = x * 1.44269504088896341f + 12582912.0f;  // 1.5 * 2^23: rounds to int
  const float n = shifted - 12582912.0f;
  const float f = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;  // ln 2, 2 parts
  float p = 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  p = p * f * f + f + 1.0f;
  // Unsigned: a NaN's bits would overflow a signed shift (and the result is NaN through p).
  const uint32_t exponent = (__builtin_bit_cast(uint32_t, shifted) - 0x4B400000u + 127u) << 23;
  return negligible ? 0.0f : p * __builtin_bit_cast(float, exponent);
}

// Softmax of `rows` rows of `length` scores, row r at s + r * stride (stride a multiple of
// kLanes). The loops run over whole lanes of kLanes (a row of 33 scores takes 3), the tail of
// each row first set to -inf (so 0 after the softmax): variable-length rows then vectorise
// with no scalar remainder.
PYBERT_SIMD_CLONES void softmax_rows(float* __restrict s, int64_t rows, int64_t length,
                                     int64_t stride) {
  for (int64_t r = 0; r < rows; ++r) {
    float* __restrict row = s + r * stride;
    for (int64_t j = length; j < stride; ++j) row[j] = -INFINITY;
    float lane_max[kLanes];
    for (int64_t i = 0; i < kLanes; ++i) lane_max[i] = -INFINITY;
    for (int64_t j = 0; j < stride; j += kLanes) {
      for (int64_t i = 0; i < kLanes; ++i) {
        lane_max[i] = row[j + i] > lane_max[i] ? row[j + i] : lane_max[i];
      }
    }
    float max = lane_max[0];
    for (int64_t i = 1; i < kLanes; ++i) max = lane_max[i] > max ? lane_max[i] : max;
    float lane_sum[kLanes] = {};
    for (int64_t j = 0; j < stride; j += kLanes) {
      for (int64_t i = 0; i < kLanes; ++i) {
        const float e = exp_nonpositive(row[j + i] - max);
        row[j + i] = e;
        lane_sum[i] += e;
      }
    }
    float sum = 0.0f;
    for (int64_t i = 0; i < kLanes; ++i) sum += lane_sum[i];
    const float inverse = 1.0f / sum;
    for (int64_t j = 0; j < stride; j += kLanes) {
      for (int64_t i = 0; i < kLanes; ++i) row[j + i] *= inverse;
    }
  }
}

}  // namespace

bool attention_batched_available() { return SgemmBatch::available(); }

void attention_batched(const float* qkv, const int32_t* cu_seqlens, const int64_t* sequences,
                       int64_t count, float* out, int64_t num_heads, int64_t head_dim) {
  const int64_t hidden = num_heads * head_dim;
  const float scale = 1.0f / std::sqrt(float(head_dim));
  // Work items are (sequence, head) pairs, sequence-major, split evenly over the threads.
  parallel_for(count * num_heads, 1, [&](int64_t begin, int64_t end) {
    // Heads [first_head, first_head + heads) of sequence b, their scores from `offset` on.
    struct Span {
      int64_t b, first_head, heads, length, offset;
    };
    thread_local std::vector<Span> round;
    thread_local std::vector<float> scores;
    thread_local SgemmBatch score_products, context_products;
    int64_t item = begin;
    while (item < end) {
      // A round: the items from `item` on whose scores fit in kChunkScores (at least one).
      round.clear();
      int64_t used = 0;
      while (item < end) {
        const int64_t b = sequences[item / num_heads];
        const int64_t first_head = item % num_heads;
        const int64_t length = cu_seqlens[b + 1] - cu_seqlens[b];
        const int64_t per_head = length * row_stride(length);
        int64_t heads = std::min(num_heads - first_head, end - item);
        if (length > 0) {
          const int64_t fit = (kChunkScores - used) / per_head;
          if (fit == 0 && used > 0) break;
          heads = std::max<int64_t>(1, std::min(heads, fit));
          round.push_back({b, first_head, heads, length, used});
          used += heads * per_head;
        }
        item += heads;
      }
      if (scores.size() < size_t(used)) scores.resize(size_t(used));
      score_products.clear();
      context_products.clear();
      for (const Span& span : round) {
        const int64_t stride = row_stride(span.length);
        const float* rows = qkv + int64_t(cu_seqlens[span.b]) * 3 * hidden;
        float* context = out + int64_t(cu_seqlens[span.b]) * hidden;
        score_products.begin_group(span.length, span.length, head_dim, /*transpose_b=*/true,
                                   scale, 3 * hidden, 3 * hidden, stride);
        context_products.begin_group(span.length, head_dim, span.length, /*transpose_b=*/false,
                                     1.0f, stride, 3 * hidden, hidden);
        for (int64_t i = 0; i < span.heads; ++i) {
          const int64_t h = span.first_head + i;
          float* s = scores.data() + span.offset + i * span.length * stride;
          score_products.add(rows + h * head_dim, rows + hidden + h * head_dim, s);
          context_products.add(s, rows + 2 * hidden + h * head_dim, context + h * head_dim);
        }
      }
      score_products.run();
      for (const Span& span : round) {
        softmax_rows(scores.data() + span.offset, span.heads * span.length, span.length,
                     row_stride(span.length));
      }
      context_products.run();
    }
  });
}

}  // namespace pybert::cpu
