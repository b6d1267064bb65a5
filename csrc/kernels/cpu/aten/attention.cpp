// The attention's dispatch on the CPU: each sequence goes to the float kernel the plan chose
// (MKL's batched GEMMs or the own tiled kernel, attention.cpp; float only, up to its length
// limit), to torch's CPU flash attention (bfloat16, longer sequences, a torch without MKL), or,
// beyond a sliding window, to the band computed by flash attention a block at a time.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "common.h"

namespace pybert::cpu {

namespace {

// Flash attention of `n` sequences of `length` tokens packed side by side from `qkv_rows`
// (one sequence when n == 1), written as (n, length, heads, d) into `out_rows`.
template <typename T>
void flash_attend(const T* qkv_rows, T* out_rows, int64_t n, int64_t length, int64_t num_heads,
                  int64_t head_dim, double scale) {
  const int64_t hidden = num_heads * head_dim;
  // Q, K and V as (n, heads, length, d) views into the rows.
  auto part = [&](int64_t index) {
    return at::from_blob(const_cast<T*>(qkv_rows) + index * hidden,
                         {n, num_heads, length, head_dim},
                         {length * 3 * hidden, head_dim, 3 * hidden, 1}, options_of<T>());
  };
  const at::Tensor context = std::get<0>(at::_scaled_dot_product_flash_attention_for_cpu(
      part(0), part(1), part(2), 0.0, false, std::nullopt, scale));
  // context is (n, heads, length, d); the heads go side by side in each token's row.
  at::from_blob(out_rows, {n, length, num_heads, head_dim},
                {length * hidden, hidden, head_dim, 1}, options_of<T>())
      .copy_(context.transpose(1, 2));
}

// Flash attention of the listed sequences (indices b of cu_seqlens, in increasing order).
template <typename T>
void flash_attend_sequences(const T* qkv, const int32_t* cu_seqlens, T* out,
                            const std::vector<int64_t>& sequences, int64_t max_seqlen,
                            int64_t num_heads, int64_t head_dim) {
  const int64_t hidden = num_heads * head_dim;
  const double scale = 1.0 / std::sqrt(double(head_dim));
  auto first_of = [&](int64_t b) { return int64_t(cu_seqlens[b]); };
  auto length_of = [&](int64_t b) { return int64_t(cu_seqlens[b + 1] - cu_seqlens[b]); };
  // Few sequences: one call each, spread over the threads by heads and query blocks.
  if (int64_t(sequences.size()) < 2 * at::get_num_threads()) {
    for (const int64_t b : sequences) {
      flash_attend(qkv + first_of(b) * 3 * hidden, out + first_of(b) * hidden, 1, length_of(b),
                   num_heads, head_dim, scale);
    }
    return;
  }
  // Many: the sequences of one length go to one batched call, so a call's fixed cost (~20 us,
  // the book's 512 sequences of 32-64 tokens were 20 ms a layer one by one) is paid per length.
  // Consecutive sequences of a length are already evenly spaced and are viewed in place; the
  // others' rows (one contiguous block each) are gathered into a reused buffer and scattered
  // back after.
  std::vector<std::vector<int64_t>> by_length(size_t(max_seqlen) + 1);
  for (const int64_t b : sequences) by_length[size_t(length_of(b))].push_back(b);
  thread_local std::vector<T> gathered, attended;  // the calling thread's, reused
  for (int64_t length = 1; length <= max_seqlen; ++length) {
    const std::vector<int64_t>& members = by_length[size_t(length)];
    const int64_t n = int64_t(members.size());
    if (n == 0) continue;
    const bool evenly_spaced =
        members.back() - members.front() == n - 1;  // consecutive, so `length` rows apart
    if (evenly_spaced) {
      flash_attend(qkv + first_of(members.front()) * 3 * hidden,
                   out + first_of(members.front()) * hidden, n, length, num_heads, head_dim,
                   scale);
      continue;
    }
    const int64_t qkv_block = length * 3 * hidden, out_block = length * hidden;
    // Grown, never shrunk: a resize that shrank would zero the memory again when it regrew.
    if (gathered.size() < size_t(n * qkv_block)) gathered.resize(size_t(n * qkv_block));
    if (attended.size() < size_t(n * out_block)) attended.resize(size_t(n * out_block));
    // Plain pointers into the lambdas: in a pool thread the thread_local names its own vector.
    T* const gathered_rows = gathered.data();
    T* const attended_rows = attended.data();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        std::memcpy(gathered_rows + i * qkv_block, qkv + first_of(members[i]) * 3 * hidden,
                    sizeof(T) * size_t(qkv_block));
      }
    });
    flash_attend(gathered_rows, attended_rows, n, length, num_heads, head_dim, scale);
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        std::memcpy(out + first_of(members[i]) * hidden, attended_rows + i * out_block,
                    sizeof(T) * size_t(out_block));
      }
    });
  }
}

// Where attention_windowed lays out its sequences: block is the number of queries per grid
// block, keys the key rows each block sees (block + 2 * window); sequence i's region starts at
// buffer row first_block[i] * block with `window` zero rows, its blocks, then zeros up to a
// multiple of block with at least `window` rows after the last block (its right keys).
struct WindowGrid {
  int64_t window, block, keys, grid;
  std::vector<int64_t> first_block, sequence_of_block;  // -1: a filler block between regions

  WindowGrid(const int32_t* cu_seqlens, const std::vector<int64_t>& sequences, int64_t w)
      : window(w), block(std::min<int64_t>(std::max<int64_t>(w, 32), 256)), keys(block + 2 * w) {
    const int64_t tail = (2 * window + block - 1) / block;  // filler blocks after a sequence
    int64_t next = 0;
    for (size_t i = 0; i < sequences.size(); ++i) {
      const int64_t b = sequences[i];
      const int64_t blocks = (cu_seqlens[b + 1] - cu_seqlens[b] + block - 1) / block;
      first_block.push_back(next);
      sequence_of_block.insert(sequence_of_block.end(), size_t(blocks), int64_t(i));
      sequence_of_block.insert(sequence_of_block.end(), size_t(tail), -1);
      next += blocks + tail;
    }
    grid = next;
  }
  // Sequence i's first query row of grid block g.
  int64_t first_query(int64_t g, int64_t i) const {
    return (g - first_block[size_t(i)]) * block;
  }
};

// The additive mask of grid blocks [g0, g0 + n): query r of a block sees key c when
// |(r + window) - c| <= window and the key lies inside its sequence; filler blocks see
// everything (their rows are thrown away).
template <typename T>
at::Tensor window_mask(const WindowGrid& layout, const int32_t* cu_seqlens,
                       const std::vector<int64_t>& sequences, int64_t g0, int64_t n) {
  const int64_t block = layout.block, keys = layout.keys, window = layout.window;
  at::Tensor mask = at::zeros({n, 1, block, keys}, options_of<T>());
  T* m = static_cast<T*>(mask.data_ptr());
  const T blocked = from_float<T>(-INFINITY);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t local = begin; local < end; ++local) {
      const int64_t i = layout.sequence_of_block[size_t(g0 + local)];
      if (i < 0) continue;
      const int64_t b = sequences[size_t(i)];
      const int64_t length = cu_seqlens[b + 1] - cu_seqlens[b];
      const int64_t first_query = layout.first_query(g0 + local, i);
      for (int64_t r = 0; r < block; ++r) {
        T* row = m + (local * block + r) * keys;
        for (int64_t c = 0; c < keys; ++c) {
          const int64_t key = first_query + c - window;  // its position in the sequence
          if (key < 0 || key >= length || std::abs(r + window - c) > window) row[c] = blocked;
        }
      }
    }
  });
  return mask;
}

// Sliding-window attention (|i - j| <= window) of the listed sequences, computing the band
// only: each sequence's queries go in blocks, and a block's keys are the rows around it, so
// the work is linear in the length. The sequences' rows are copied into one buffer laid out
// as WindowGrid says, so that every block's queries and keys are strided views of it; torch's
// flash attention (with window_mask) computes them a chunk of the grid at a time, the chunk's
// mask within kWindowMaskBytes (a wide window's would otherwise grow as length x window).
template <typename T>
void attention_windowed(const T* qkv, const int32_t* cu_seqlens, T* out,
                        const std::vector<int64_t>& sequences, int64_t window,
                        int64_t num_heads, int64_t head_dim) {
  constexpr int64_t kWindowMaskBytes = 32 << 20;
  const int64_t hidden = num_heads * head_dim, width = 3 * hidden;
  const WindowGrid layout(cu_seqlens, sequences, window);
  const int64_t block = layout.block, keys = layout.keys, grid = layout.grid;
  const at::TensorOptions options = options_of<T>();
  // keys - block more rows at the end: the last grid block's key view stays inside.
  at::Tensor buffer = at::zeros({grid * block + keys, width}, options);
  T* base = static_cast<T*>(buffer.data_ptr());
  at::parallel_for(0, int64_t(sequences.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = sequences[size_t(i)];
      std::memcpy(base + (layout.first_block[size_t(i)] * block + window) * width,
                  qkv + int64_t(cu_seqlens[b]) * width,
                  sizeof(T) * size_t((cu_seqlens[b + 1] - cu_seqlens[b]) * width));
    }
  });
  // Grid block g: queries at buffer rows window + g * block, keys from row g * block on.
  auto view = [&](int64_t column, int64_t first_row, int64_t count) {
    return at::from_blob(base + first_row * width + column, {grid, num_heads, count, head_dim},
                         {block * width, head_dim, width, 1}, options);
  };
  const at::Tensor q = view(0, window, block), k = view(hidden, 0, keys),
                   v = view(2 * hidden, 0, keys);
  const int64_t chunk =
      std::max<int64_t>(1, kWindowMaskBytes / (block * keys * int64_t(sizeof(T))));
  const double scale = 1.0 / std::sqrt(double(head_dim));
  for (int64_t g0 = 0; g0 < grid; g0 += chunk) {
    const int64_t n = std::min(chunk, grid - g0);
    const at::Tensor context = std::get<0>(at::_scaled_dot_product_flash_attention_for_cpu(
        q.narrow(0, g0, n), k.narrow(0, g0, n), v.narrow(0, g0, n), 0.0, false,
        window_mask<T>(layout, cu_seqlens, sequences, g0, n), scale));
    // (n, heads, block, d) -> rows (n * block, hidden); each block's real rows go to `out`.
    const at::Tensor rows = context.transpose(1, 2).contiguous();
    const T* attended = static_cast<const T*>(rows.data_ptr());
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t local = begin; local < end; ++local) {
        const int64_t i = layout.sequence_of_block[size_t(g0 + local)];
        if (i < 0) continue;
        const int64_t b = sequences[size_t(i)];
        const int64_t first_query = layout.first_query(g0 + local, i);
        const int64_t real = std::min(block, cu_seqlens[b + 1] - cu_seqlens[b] - first_query);
        std::memcpy(out + (int64_t(cu_seqlens[b]) + first_query) * hidden,
                    attended + local * block * hidden, sizeof(T) * size_t(real * hidden));
      }
    });
  }
}

}  // namespace

template <typename T>
void attention_varlen(const T* qkv, const int32_t* cu_seqlens, T* out, int64_t batch,
                      int64_t max_seqlen, int64_t num_heads, int64_t head_dim, int64_t window,
                      AttentionPath kernel, int64_t kernel_max_length) {
  if (kernel == AttentionPath::kMkl && !attention_path_available(kernel)) {
    kernel = AttentionPath::kOwn;  // a torch without MKL: the own kernel does the same work
  }
  const int64_t kernel_limit = std::is_same_v<T, float> && kernel != AttentionPath::kFlash
                                   ? std::min(kernel_max_length, kAttentionKernelMaxLength)
                                   : 0;
  // An empty slot (length 0) has nothing to attend; a sequence no longer than window + 1 sees
  // all of itself in the window.
  std::vector<int64_t> by_kernel, flashed, windowed;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t length = cu_seqlens[b + 1] - cu_seqlens[b];
    if (length > max_seqlen) throw std::invalid_argument("a sequence exceeds max_seqlen");
    if (length == 0) continue;
    if (window > 0 && length > window + 1) {
      windowed.push_back(b);
      continue;
    }
    (length <= kernel_limit ? by_kernel : flashed).push_back(b);
  }
  if (!windowed.empty()) {
    attention_windowed(qkv, cu_seqlens, out, windowed, window, num_heads, head_dim);
  }
  if constexpr (std::is_same_v<T, float>) {
    if (!by_kernel.empty()) {
      (kernel == AttentionPath::kMkl ? attention_batched : attention_tiled)(
          qkv, cu_seqlens, by_kernel.data(), int64_t(by_kernel.size()), out, num_heads,
          head_dim);
    }
  }
  if (!flashed.empty()) {
    flash_attend_sequences(qkv, cu_seqlens, out, flashed, max_seqlen, num_heads, head_dim);
  }
}

#define PYBERT_INSTANTIATE(T)                                                                 \
  template void attention_varlen<T>(const T*, const int32_t*, T*, int64_t, int64_t, int64_t, \
                                    int64_t, int64_t, AttentionPath, int64_t);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cpu
