// Attention in float, two ways: for each (sequence, head), with L its length,
//   S = Q K^T / sqrt(d)  (L x L),  P = softmax over each row of S,  O = P V  (L x d).
// Torch's flash attention pays ~15 us of fixed cost per (sequence, head), most of the time at
// the book's 32-64 tokens (measured: benchmarks/RESULTS.md); neither kernel here pays it.
// - attention_batched: the products of many (sequence, head) pairs go to MKL in one batched
//   call. Q, K and V are read in place from the packed QKV rows and O is written in place
//   into the output rows (the BLAS takes row strides); S lives in a per-thread buffer sized
//   to stay in L2.
// - attention_tiled: no library. Per (sequence, head, block of up to 64 queries) S's block,
//   its softmax and its share of O, the products in register tiles (multiply); K^T and V
//   copied once per (sequence, head) and thread into padded buffers that stay in L2. MKL runs
//   AMD processors on its AVX2 code and is absent from other torch builds (aarch64): this
//   kernel is what those get, vectorised for the CPU's own ISA.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string_view>
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
// each row first set to -FLT_MAX (so 0 after the softmax): variable-length rows then
// vectorise with no scalar remainder. A score that overflowed (q . k beyond float's range)
// makes its row NaN, for the forward's finiteness check to report: +inf and NaN do so through
// the arithmetic, and -inf is caught here, as the sign an overflowing sum ends with is not
// the sign of the true value (a fused multiply-add keeps the first infinity it reaches), so
// its weight of 0 could be wrong.
PYBERT_SIMD_CLONES void softmax_rows(float* __restrict s, int64_t rows, int64_t length,
                                     int64_t stride) {
  for (int64_t r = 0; r < rows; ++r) {
    float* __restrict row = s + r * stride;
    for (int64_t j = length; j < stride; ++j) row[j] = -FLT_MAX;
    float lane_max[kLanes], lane_min[kLanes];
    for (int64_t i = 0; i < kLanes; ++i) lane_max[i] = lane_min[i] = -FLT_MAX;
    for (int64_t j = 0; j < stride; j += kLanes) {
      for (int64_t i = 0; i < kLanes; ++i) {
        lane_max[i] = row[j + i] > lane_max[i] ? row[j + i] : lane_max[i];
        lane_min[i] = row[j + i] < lane_min[i] ? row[j + i] : lane_min[i];
      }
    }
    float max = lane_max[0], min = lane_min[0];
    for (int64_t i = 1; i < kLanes; ++i) {
      max = lane_max[i] > max ? lane_max[i] : max;
      min = lane_min[i] < min ? lane_min[i] : min;
    }
    if (min == -INFINITY) max = NAN;  // poisons the row through the exps below
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

// K^T (head_dim, keys_stride) and V (length, padded_dim) of one (sequence, head), zero-padded
// for the tiles, from its K and V rows (`ld` apart) at `keys` and `values_in`.
void copy_keys_and_values(const float* keys, const float* values_in, int64_t ld, int64_t length,
                          int64_t head_dim, int64_t keys_stride, int64_t padded_dim,
                          std::vector<float>& keys_t, std::vector<float>& values) {
  if (keys_t.size() < size_t(head_dim * keys_stride)) {
    keys_t.resize(size_t(head_dim * keys_stride));
  }
  if (values.size() < size_t(length * padded_dim)) values.resize(size_t(length * padded_dim));
  // 16 keys at a time: each row of K^T gets a whole cache line per pass.
  for (int64_t j0 = 0; j0 < length; j0 += 16) {
    const int64_t keys_here = std::min<int64_t>(16, length - j0);
    for (int64_t c = 0; c < head_dim; ++c) {
      float* row = keys_t.data() + c * keys_stride + j0;
      for (int64_t j = 0; j < keys_here; ++j) row[j] = keys[(j0 + j) * ld + c];
    }
  }
  for (int64_t c = 0; c < head_dim; ++c) {
    std::fill(keys_t.data() + c * keys_stride + length, keys_t.data() + (c + 1) * keys_stride,
              0.0f);
  }
  for (int64_t j = 0; j < length; ++j) {
    float* row = values.data() + j * padded_dim;
    std::memcpy(row, values_in + j * ld, sizeof(float) * size_t(head_dim));
    std::fill(row + head_dim, row + padded_dim, 0.0f);
  }
}

}  // namespace

bool attention_path_available(AttentionPath path) {
  return path != AttentionPath::kMkl || SgemmBatch::available();
}

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

namespace {

// The own kernel's products run in register tiles: kRows rows by kVectors vectors of C held
// in registers through the whole k loop, shaped per ISA to fill its register file (AVX-512:
// 8 x 32 in 16 of 32 registers; AVX2: 6 x 16 in 12 of 16; 16-byte vectors, NEON's 32
// registers: 4 x 16), and room left for B's vectors and A's broadcast.
constexpr int64_t kTileColumnsMax = 32;  // the widest tile's columns
constexpr int64_t kQueryBlock = 64;      // queries per work item: a 64 x 512 S block is 128 KB

int64_t padded_columns(int64_t n) {
  return (n + kTileColumnsMax - 1) / kTileColumnsMax * kTileColumnsMax;
}

// C (m, n) = alpha A (m, k) B (k, n), row-major with row strides lda, ldb, ldc. B must be
// readable to padded_columns(n) columns (C gets only its n). Each tile: kRows rows of A (the
// last tile's missing rows read row m - 1 again and are not stored) against a tile of B's
// columns. Written in GCC's vector extension, which lowers to the ISA of the function this is
// inlined into (multiply_for_this_cpu); the loads are one memcpy per vector so that the tile
// stays in registers.
template <int kVectorBytes, int kRows, int kVectors>
[[gnu::always_inline]] inline void multiply(const float* a, int64_t lda, const float* b,
                                            int64_t ldb, float* c, int64_t ldc, int64_t m,
                                            int64_t n, int64_t k, float alpha) {
  typedef float Vector __attribute__((vector_size(kVectorBytes)));
  constexpr int64_t kLanes = kVectorBytes / sizeof(float), kColumns = kLanes * kVectors;
  static_assert(kTileColumnsMax % kColumns == 0, "B's padding must hold whole tiles");
  for (int64_t j0 = 0; j0 < n; j0 += kColumns) {
    const int64_t width = std::min(kColumns, n - j0);
    for (int64_t r0 = 0; r0 < m; r0 += kRows) {
      const int64_t rows = std::min<int64_t>(kRows, m - r0);
      const float* a_row[kRows];
      for (int64_t r = 0; r < kRows; ++r) a_row[r] = a + (r0 + std::min(r, rows - 1)) * lda;
      Vector sum[kRows][kVectors];
      for (int r = 0; r < kRows; ++r) {
        for (int v = 0; v < kVectors; ++v) sum[r][v] = Vector{};
      }
      for (int64_t i = 0; i < k; ++i) {
        Vector b_row[kVectors];
#pragma GCC unroll 4
        for (int v = 0; v < kVectors; ++v) {
          std::memcpy(&b_row[v], b + i * ldb + j0 + v * kLanes, sizeof(Vector));
        }
#pragma GCC unroll 8
        for (int r = 0; r < kRows; ++r) {
          const float x = a_row[r][i];
#pragma GCC unroll 4
          for (int v = 0; v < kVectors; ++v) sum[r][v] += x * b_row[v];
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        float tile_row[kColumns];
        float* c_row = c + (r0 + r) * ldc + j0;
        // A whole tile row is stored in fixed-size copies (vector stores); a variable-size
        // copy costs as much as the row's arithmetic.
        float* dest = width == kColumns ? c_row : tile_row;
        for (int v = 0; v < kVectors; ++v) {
          const Vector scaled = sum[r][v] * alpha;
          std::memcpy(dest + v * kLanes, &scaled, sizeof scaled);
        }
        if (width < kColumns) std::memcpy(c_row, tile_row, sizeof(float) * size_t(width));
      }
    }
  }
}

using MultiplyFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t,
                            int64_t, int64_t, int64_t, float);
struct Multiply {
  MultiplyFn fn;
  const char* isa;
};

// multiply for each ISA level, the one for this CPU chosen when the library loads, as
// target_clones does for the other kernels (simd.h), whose resolver asks the CPU the same
// question. One body cannot serve every width: GCC lowers a vector wider than the ISA's
// element by element, and a tile that overflows the register file spills.
#if PYBERT_HAS_SIMD_CLONES
__attribute__((target("arch=x86-64-v4"))) void multiply_avx512(
    const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t m,
    int64_t n, int64_t k, float alpha) {
  multiply<64, 8, 2>(a, lda, b, ldb, c, ldc, m, n, k, alpha);
}
__attribute__((target("arch=x86-64-v3"))) void multiply_avx2(
    const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t m,
    int64_t n, int64_t k, float alpha) {
  multiply<32, 6, 2>(a, lda, b, ldb, c, ldc, m, n, k, alpha);
}
#endif
void multiply_baseline(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                       int64_t ldc, int64_t m, int64_t n, int64_t k, float alpha) {
  multiply<16, 4, 4>(a, lda, b, ldb, c, ldc, m, n, k, alpha);  // NEON on aarch64, SSE2 on x86
}

// PYBERT_ATTENTION_ISA=avx2|baseline caps the choice (below what the CPU has, never above):
// each variant is then tested on one machine.
Multiply multiply_for_this_cpu() {
#if PYBERT_HAS_SIMD_CLONES
  const char* cap = std::getenv("PYBERT_ATTENTION_ISA");
  const std::string_view wanted = cap == nullptr ? "" : cap;
  const bool avx2_or_less = wanted == "avx2" || wanted == "baseline";
  if (!avx2_or_less && __builtin_cpu_supports("x86-64-v4")) return {multiply_avx512, "avx512"};
  if (wanted != "baseline" && __builtin_cpu_supports("x86-64-v3")) return {multiply_avx2, "avx2"};
#endif
  return {multiply_baseline, "baseline"};
}

const Multiply kMultiply = multiply_for_this_cpu();

}  // namespace

const char* attention_tiled_isa() { return kMultiply.isa; }

void attention_tiled(const float* qkv, const int32_t* cu_seqlens, const int64_t* sequences,
                     int64_t count, float* out, int64_t num_heads, int64_t head_dim) {
  const int64_t hidden = num_heads * head_dim, qkv_width = 3 * hidden;
  const int64_t padded_dim = padded_columns(head_dim);
  const float scale = 1.0f / std::sqrt(float(head_dim));
  // Work items are (sequence, head, query block), in that order, so that a thread's
  // consecutive items mostly share a (sequence, head) and its copies of K^T and V.
  // first_item[i]: the first item of sequences[i].
  std::vector<int64_t> first_item(size_t(count) + 1, 0);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t length = cu_seqlens[sequences[i] + 1] - cu_seqlens[sequences[i]];
    first_item[size_t(i) + 1] =
        first_item[size_t(i)] + num_heads * ((length + kQueryBlock - 1) / kQueryBlock);
  }
  parallel_for(first_item.back(), 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> keys_t, values, scores;
    int64_t copied_b = -1, copied_h = -1;
    int64_t i = std::upper_bound(first_item.begin(), first_item.end(), begin) -
                first_item.begin() - 1;
    for (int64_t item = begin; item < end; ++item) {
      while (item >= first_item[size_t(i) + 1]) ++i;
      const int64_t b = sequences[i], start = cu_seqlens[b];
      const int64_t length = cu_seqlens[b + 1] - start;
      const int64_t blocks = (length + kQueryBlock - 1) / kQueryBlock;
      const int64_t h = (item - first_item[size_t(i)]) / blocks;
      const int64_t first_query = (item - first_item[size_t(i)]) % blocks * kQueryBlock;
      const int64_t queries = std::min(kQueryBlock, length - first_query);
      const int64_t stride = row_stride(length);  // S's, for softmax_rows
      const int64_t keys_stride = padded_columns(length);
      const float* q = qkv + start * qkv_width + h * head_dim;
      if (b != copied_b || h != copied_h) {
        copy_keys_and_values(q + hidden, q + 2 * hidden, qkv_width, length, head_dim,
                             keys_stride, padded_dim, keys_t, values);
        copied_b = b;
        copied_h = h;
      }
      if (scores.size() < size_t(kQueryBlock * stride)) {
        scores.resize(size_t(kQueryBlock * stride));
      }
      kMultiply.fn(q + first_query * qkv_width, qkv_width, keys_t.data(), keys_stride,
                   scores.data(), stride, queries, stride, head_dim, scale);
      softmax_rows(scores.data(), queries, length, stride);
      kMultiply.fn(scores.data(), stride, values.data(), padded_dim,
                   out + (start + first_query) * hidden + h * head_dim, hidden, queries,
                   head_dim, length, 1.0f);
    }
  });
}

}  // namespace pybert::cpu
