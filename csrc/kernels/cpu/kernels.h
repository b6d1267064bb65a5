// CPU kernels: pure compute on raw pointers and sizes. No torch, no BERT.
//
// Each kernel is the readable reference for its CUDA twin in ../cuda/ (same arguments, same
// layouts). Matrices are row-major. "Packed" activations hold only the real tokens of a batch,
// sequence after sequence: sequence b owns rows [cu_seqlens[b], cu_seqlens[b + 1]).
//
// T is float or bfloat16 (bfloat16.h); every reduction and every elementwise formula is
// computed in float. The GEMMs go to torch's own CPU kernels (MKL and oneDNN), as does the
// attention in bfloat16 (its flash attention): the ATen adapter in aten/, the one folder here
// that sees torch. The float attention runs in MKL's batched call (mkl.h) or in the own tiled
// kernel (attention.cpp), whichever the plan measured faster.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "../activation.h"
#include "../args.h"
#include "bfloat16.h"

namespace pybert::cpu {

// How a weight matrix is held for the GEMM library: pybert::WeightStorage (../args.h).

// The ways a float or bfloat16 weight GEMM can run. Which is fastest depends on the CPU (MKL
// runs AMD processors on its AVX2 code; oneDNN has AVX-512, AMX and AVX2 kernels of its own)
// and on the row count, so pybert.engine.cpu_plan measures them on the machine that runs.
enum class GemmPath : int {
  kAten = 0,          // ATen's addmm on the plain matrix (torch's own choice of library)
  kMklPacked = 1,     // MKL's packed sgemm, the weight packed once (float only)
  kOneDnnPacked = 2,  // oneDNN's linear, the weight reordered once, bias and activation fused
  kInt8 = 3,          // oneDNN's u8 x s8 GEMM on int8 weights (float, WeightStorage::kInt8 only)
};
constexpr int kGemmPaths = 4;

// A weight's paths by row count: a GEMM of m rows takes the path of the first entry with
// m <= max_rows (the last entry covers every m). Empty: the default, packed up to
// kPackedRowsLimit rows and ATen beyond (measured on an AVX-512/AMX Xeon, RESULTS.md
// 2026-11-26; what an engine gets when nothing was measured).
using GemmChoice = std::vector<std::pair<int64_t, GemmPath>>;
constexpr int64_t kPackedRowsLimit = 256;

// A weight matrix (and its bias) made ready for gemm_bias_act once, when an engine is built.
// Opaque: its contents belong to the GEMM library (aten/gemm.cpp).
class PreparedWeight;
struct PreparedWeightDeleter {
  void operator()(PreparedWeight* weight) const;
};
using PreparedWeightPtr = std::unique_ptr<PreparedWeight, PreparedWeightDeleter>;

// Prepares weight (n, k) with bias (n) or null in `format`; kPacked makes the forms `choice`
// names (a path this machine cannot prepare falls back to kAten). kInt8 needs T = float.
// Returns null when nothing is prepared (kPlain, or no path beyond kAten): callers then pass
// null to gemm_bias_act, which uses the plain matrix.
template <typename T>
PreparedWeightPtr prepare_weight(const T* weight, const T* bias, int64_t n, int64_t k,
                                 WeightStorage format, const GemmChoice& choice = {});
// Whether this machine's torch can run `path` for T (kOneDnnPacked in bfloat16 needs
// AVX512-BF16, AMX, AVX-NE-CONVERT or AVX-512BW; kMklPacked needs MKL).
template <typename T>
bool gemm_path_available(GemmPath path);
// Seconds one GEMM of (m, k) x (n, k)^T + bias takes on this machine by each of `paths`
// (result[p][i]) for each m of `rows`: the fastest of `repeats` calls after a warm-up, on
// operands made once (values spread over a range, not zeros), the weight prepared as an engine
// would. Negative where a path is not available for this shape.
template <typename T>
std::vector<std::vector<double>> time_gemm(const std::vector<GemmPath>& paths,
                                           const std::vector<int64_t>& rows, int64_t n,
                                           int64_t k, int repeats);
// Whether this machine's torch can prepare weights in `format` for T.
template <typename T>
bool weight_storage_supported(WeightStorage format);

// out[m, n] = act(sum_k a[m, k] * weight[n, k] + bias[n])
// a: (m, k); weight: (n, k), the nn.Linear layout; bias: (n) or null; out: (m, n).
// prepared, when not null, is prepare_weight(weight, bias, n, k, ...): int8 weights are always
// used; otherwise the path its choice names for m rows.
template <typename T>
void gemm_bias_act(const T* a, const T* weight, const T* bias, const PreparedWeight* prepared,
                   T* out, int64_t m, int64_t n, int64_t k, Activation act);

// Token + segment + position embeddings of the real tokens, packed:
// out[cu_seqlens[b] + s] = token[tokens[b, s]] + segment[segments[b, s]] + position[s].
// out: (total_tokens, hidden); rows from cu_seqlens[batch] to total_tokens (spare capacity,
// as in a captured CUDA graph) are zeros.
template <typename T>
void embed_packed(const PackedIds& ids, const EmbeddingTables<T>& tables, T* out);

// out[r] = LayerNorm(x[r] + residual[r]) * gamma + beta over rows of width `hidden`.
// residual may be null (plain LayerNorm), beta too (a LayerNorm without bias). out may alias
// x or residual.
template <typename T>
void add_layernorm(const T* x, const T* residual, const T* gamma, const T* beta, T* out,
                   int64_t rows, int64_t hidden, float eps);

// A pre-norm layer's residual step: x[r] += delta[r], then normed[r] = LayerNorm(x[r]) * gamma
// + beta (beta may be null; gamma null: the sum only, normed unused).
template <typename T>
void add_residual_layernorm(const T* delta, T* x, const T* gamma, const T* beta, T* normed,
                            int64_t rows, int64_t hidden, float eps);

// Rotary positions, in place on the Q and K thirds of packed QKV rows (layout as in
// attention_varlen): for token s of its sequence and each head's vector x of head_dim d,
// x[i] <- x[i] cos[s, i] - x[i + d/2] sin[s, i] and x[i + d/2] <- x[i + d/2] cos[s, i] +
// x[i] sin[s, i], i < d/2 (the "rotate half" form of Hugging Face's models). cos, sin:
// (>= the longest sequence, d/2). Spare rows beyond cu_seqlens[batch] are left as they are.
template <typename T>
void rotary_qk(T* qkv, const int32_t* cu_seqlens, int64_t batch, int64_t num_heads,
               int64_t head_dim, const T* cos, const T* sin);

// A gated FFN's middle: out[r, i] = act(in[r, i]) * in[r, width + i]; in: (rows, 2 * width),
// out: (rows, width). Computed by torch's vectorised activations (aten/gemm.cpp).
template <typename T>
void gated_activation(const T* in, T* out, int64_t rows, int64_t width, Activation act);

// The ways the float attention of a sequence can run. Which is fastest depends on the CPU and
// the length (MKL runs AMD processors on its AVX2 code; torch's flash attention pays a fixed
// cost per (sequence, head)), so pybert.engine.cpu_plan measures them on the machine that runs.
enum class AttentionPath : int {
  kFlash = 0,  // torch's flash attention (aten/attention.cpp)
  kMkl = 1,    // many (sequence, head) pairs' products in MKL's batched sgemm (attention.cpp)
  kOwn = 2,    // pybert's own tiled kernel: plain C++, vectorised per ISA (attention.cpp)
};
constexpr int kAttentionPaths = 3;

// Multi-head self-attention over packed sequences, keys limited to each sequence's tokens.
// qkv: (total_tokens, 3 * hidden), columns [Q | K | V], head h owns columns [h*d, (h+1)*d) of
// each third, d = hidden / num_heads; out: (total_tokens, hidden), heads side by side.
// out[t, head h] = softmax_j(q_t . k_j / sqrt(d)) v_j over the keys j of t's sequence, and
// with window > 0 only those with |t - j| <= window (a sliding window, ModernBERT's local
// layers): sequences longer than window + 1 then go to attention_windowed, which computes the
// band and skips the rest. Float sequences of up to kernel_max_length tokens go to `kernel`
// (kMkl where this process has MKL, else kOwn); bfloat16, longer sequences and the rest go
// to torch's flash attention (AMX/AVX512-BF16 tiles for bfloat16). kernel_max_length is
// capped at kAttentionKernelMaxLength: beyond BERT's 512 positions flash's tiles suit long
// sequences better, and attention_batched holds a sequence's whole L x L scores per head.
constexpr int64_t kAttentionKernelMaxLength = 512;
template <typename T>
void attention_varlen(const T* qkv, const int32_t* cu_seqlens, T* out, int64_t batch,
                      int64_t max_seqlen, int64_t num_heads, int64_t head_dim,
                      int64_t window = 0, AttentionPath kernel = AttentionPath::kMkl,
                      int64_t kernel_max_length = kAttentionKernelMaxLength);
// Whether `path` can run in this process (kMkl needs MKL; the others always can).
bool attention_path_available(AttentionPath path);
// Seconds attention_varlen takes on `batch` random float sequences of `length` tokens, all
// by `path`: the fastest of `repeats` after a warm-up; negative where `path` is not available.
double time_attention(AttentionPath path, int64_t batch, int64_t length, int64_t num_heads,
                      int64_t head_dim, int repeats);

// attention_varlen's arithmetic for the `count` sequences listed in `sequences` (indices b of
// cu_seqlens; the other rows of out are left as they are), each (sequence, head)'s products
// batched with others' into few BLAS calls. Needs attention_path_available(kMkl).
void attention_batched(const float* qkv, const int32_t* cu_seqlens, const int64_t* sequences,
                       int64_t count, float* out, int64_t num_heads, int64_t head_dim);
// The same arithmetic by pybert's own kernel: per (sequence, head), blocks of queries against
// all the keys, the products in register tiles (no library).
void attention_tiled(const float* qkv, const int32_t* cu_seqlens, const int64_t* sequences,
                     int64_t count, float* out, int64_t num_heads, int64_t head_dim);
// The vectors attention_tiled's products run in on this CPU: "avx512", "avx2" or "baseline"
// (SSE2 on x86-64, NEON on aarch64); PYBERT_ATTENTION_ISA=avx2|baseline caps it (tests).
const char* attention_tiled_isa();

// out[b * num_positions + p] = packed[cu_seqlens[b] + positions[b, p]] (rows of width hidden).
// positions: (batch, num_positions), each in [0, length of sequence b); null means position 0
// of every sequence (the <cls> rows) with num_positions = 1.
template <typename T>
void gather_rows(const T* packed, const int32_t* cu_seqlens, const int64_t* positions, T* out,
                 int64_t batch, int64_t num_positions, int64_t hidden);

// Restore the padded layout: out (batch, seq_len, hidden) gets the packed rows of each
// sequence and zeros at its padded positions.
template <typename T>
void unpack_padded(const T* packed, const int32_t* cu_seqlens, T* out, int64_t batch,
                   int64_t seq_len, int64_t hidden);

// Dynamic quantisation of a GEMM's activations, one scale and one offset per row (per token,
// so that one token's outliers cost no other token its precision; asymmetric, so that a row
// that is not centred on zero, as GELU's outputs are not, keeps all 256 codes):
// x (rows, cols) ~ row_scales[r] * (out - 128) + row_offsets[r], out in [0, 255] (the unsigned
// input of oneDNN's u8 x s8 GEMM with zero point 128: its fast path, measured 2x faster than
// zero point 0 on a Zen 4 at some shapes). Returns false, with out undefined, if x holds NaN or
// infinity.
bool quantize_rows_u8(const float* x, int64_t rows, int64_t cols, uint8_t* out,
                      float* row_scales, float* row_offsets);
// The epilogue of a GEMM y = (out - 128) W^T on quantize_rows_u8's rows (W the dequantised weight,
// column_sums[c] = sum_k W[c, k]): out[r, c] = y[r, c] * row_scales[r] + row_offsets[r] *
// column_sums[c] + bias[c] (bias may be null), which is x W^T + bias up to the rounding of x.
// out and y must not overlap.
void scale_rows_add_bias(const float* y, const float* row_scales, const float* row_offsets,
                         const float* column_sums, const float* bias, float* out, int64_t rows,
                         int64_t cols);

// Raises the CPU forward's error for arithmetic that overflowed (std::domain_error, a
// ValueError in Python): finite weights can still give NaN or infinity.
[[noreturn]] void fail_non_finite_forward();

// Whether all n values are finite (no NaN, no infinity).
template <typename T>
bool all_finite(const T* values, int64_t n);

}  // namespace pybert::cpu
