// Fused multi-head attention over packed variable-length sequences.
//
// qkv: (total_tokens, 3 * hidden) with columns [Q | K | V], head h at columns [h*d, (h+1)*d)
// of each third; cu_seqlens: (batch + 1); out: (total_tokens, hidden).
// out[t, head h] = softmax_j(q_t . k_j / sqrt(d)) v_j over the keys j of t's sequence.
//
// Two kernels with that contract:
// - attention_tensor_core_kernel (fp16/bf16, d % 8 == 0, d <= 256): flash-attention style.
//   A block owns BLOCK_ROWS queries of one (sequence, head); it walks the sequence's keys in
//   tiles of 64, computing scores with WMMA (mma.sync) into shared memory, updating a running
//   max and sum per query (online softmax), and accumulating P.V with WMMA. Scores never
//   reach global memory, so memory traffic is linear in the sequence length.
// - attention_simple_kernel (every type and head dim, fp32, and a sliding window): one warp
//   per query, keys in turn (only those within the window), the same online softmax on the
//   CUDA cores.
#include <mma.h>

#include <mutex>
#include <set>
#include <type_traits>

#include "common.cuh"

namespace pybert::cuda {
namespace {

constexpr int kKeyTile = 64;   // keys per tile
constexpr int kWarpRows = 16;  // query rows per warp (one WMMA tile high)

// ---------------------------------------------------------------------------------------------
// CUDA-core kernel: warp w of block (x, h, b) computes query x * 4 + w of sequence b, head h.
template <typename T>
__global__ void attention_simple_kernel(const T* qkv, const int32_t* cu_seqlens, T* out,
                                        int num_heads, int head_dim, float scale, int window) {
  extern __shared__ float simple_smem[];  // per warp: q (head_dim) and acc (head_dim)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.z, h = blockIdx.y;
  const int first = cu_seqlens[b], length = cu_seqlens[b + 1] - first;
  const int i = blockIdx.x * (blockDim.x / 32) + warp;
  if (i >= length) return;
  const int64_t hidden = int64_t(num_heads) * head_dim, stride = 3 * hidden;
  float* q = simple_smem + warp * 2 * head_dim;
  float* acc = q + head_dim;
  const T* q_src = qkv + (first + i) * stride + int64_t(h) * head_dim;
  for (int c = lane; c < head_dim; c += 32) {
    q[c] = to_float(q_src[c]) * scale;
    acc[c] = 0.0f;
  }
  __syncwarp();
  float running_max = -INFINITY, running_sum = 0.0f;
  // A window (|i - j| <= window) limits the keys; 0: all of the sequence.
  const int first_key = window > 0 ? max(0, i - window) : 0;
  const int end_key = window > 0 ? min(length, i + window + 1) : length;
  for (int j = first_key; j < end_key; ++j) {
    const T* k = qkv + (first + j) * stride + hidden + int64_t(h) * head_dim;
    const T* v = k + hidden;
    float dot = 0.0f;
    for (int c = lane; c < head_dim; c += 32) dot += q[c] * to_float(k[c]);
    dot = warp_sum(dot);
    const float new_max = fmaxf(running_max, dot);
    const float correction = expf(running_max - new_max);
    const float p = expf(dot - new_max);
    running_sum = running_sum * correction + p;
    for (int c = lane; c < head_dim; c += 32) acc[c] = acc[c] * correction + p * to_float(v[c]);
    running_max = new_max;
  }
  T* dst = out + (first + i) * hidden + int64_t(h) * head_dim;
  const float inv = 1.0f / running_sum;
  for (int c = lane; c < head_dim; c += 32) dst[c] = from_float<T>(acc[c] * inv);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core kernel. Shared memory, for padded head dim P = round_up(d, 16) (columns past d
// are zeros, which leave every dot product unchanged):
//   q_tile  BLOCK_ROWS x (P + 8)   T      k_tile, v_tile  64 x (P + 8)   T
//   scores  BLOCK_ROWS x (64 + 4)  float  probs           BLOCK_ROWS x (64 + 8)  T
//   acc     BLOCK_ROWS x (P + 4)   float  row_max, row_sum  BLOCK_ROWS floats
// The +8 / +4 pads stagger rows across banks and keep every WMMA pointer 32-byte aligned.
struct TileLayout {
  int padded_dim, qkv_ld, acc_ld, block_rows;
  size_t q_off, k_off, v_off, scores_off, probs_off, acc_off, max_off, sum_off, bytes;

  __host__ __device__ TileLayout(int head_dim, int rows, size_t elem) : block_rows(rows) {
    padded_dim = (head_dim + 15) / 16 * 16;
    qkv_ld = padded_dim + 8;
    acc_ld = padded_dim + 4;
    size_t offset = 0;
    auto region = [&offset](size_t size) {
      const size_t start = offset;
      offset += (size + 127) / 128 * 128;
      return start;
    };
    q_off = region(size_t(rows) * qkv_ld * elem);
    k_off = region(size_t(kKeyTile) * qkv_ld * elem);
    v_off = region(size_t(kKeyTile) * qkv_ld * elem);
    scores_off = region(size_t(rows) * (kKeyTile + 4) * sizeof(float));
    probs_off = region(size_t(rows) * (kKeyTile + 8) * elem);
    acc_off = region(size_t(rows) * acc_ld * sizeof(float));
    max_off = region(size_t(rows) * sizeof(float));
    sum_off = region(size_t(rows) * sizeof(float));
    bytes = offset;
  }
};

// Copy `rows` rows of d values (a head's slice of Q, K or V) into a shared tile of ld columns,
// 8 values (16 bytes) at a time; rows past `valid_rows` and columns past d become zeros.
template <typename T>
__device__ void load_tile(T* tile, int ld, int padded_dim, const T* src, int64_t src_stride,
                          int rows, int valid_rows, int head_dim) {
  const int chunks_per_row = padded_dim / 8;
  for (int chunk = threadIdx.x; chunk < rows * chunks_per_row; chunk += blockDim.x) {
    const int r = chunk / chunks_per_row, c = (chunk % chunks_per_row) * 8;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (r < valid_rows && c < head_dim) {
      value = *reinterpret_cast<const uint4*>(src + r * src_stride + c);
    }
    *reinterpret_cast<uint4*>(tile + r * ld + c) = value;
  }
}

template <typename T, int BLOCK_ROWS>
__global__ void __launch_bounds__(BLOCK_ROWS / kWarpRows * 32)
attention_tensor_core_kernel(const T* qkv, const int32_t* cu_seqlens, T* out, int num_heads,
                             int head_dim, float scale) {
  using namespace nvcuda;
  extern __shared__ __align__(128) unsigned char tc_smem[];
  const TileLayout layout(head_dim, BLOCK_ROWS, sizeof(T));
  T* q_tile = reinterpret_cast<T*>(tc_smem + layout.q_off);
  T* k_tile = reinterpret_cast<T*>(tc_smem + layout.k_off);
  T* v_tile = reinterpret_cast<T*>(tc_smem + layout.v_off);
  float* scores = reinterpret_cast<float*>(tc_smem + layout.scores_off);
  T* probs = reinterpret_cast<T*>(tc_smem + layout.probs_off);
  float* acc = reinterpret_cast<float*>(tc_smem + layout.acc_off);
  float* row_max = reinterpret_cast<float*>(tc_smem + layout.max_off);
  float* row_sum = reinterpret_cast<float*>(tc_smem + layout.sum_off);

  const int b = blockIdx.z, h = blockIdx.y;
  const int first = cu_seqlens[b], length = cu_seqlens[b + 1] - first;
  const int q0 = blockIdx.x * BLOCK_ROWS;
  if (q0 >= length) return;  // the whole block leaves together
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int P = layout.padded_dim, ld = layout.qkv_ld, acc_ld = layout.acc_ld;
  const int64_t hidden = int64_t(num_heads) * head_dim, stride = 3 * hidden;
  const T* head_base = qkv + int64_t(first) * stride + int64_t(h) * head_dim;

  load_tile(q_tile, ld, P, head_base + q0 * stride, stride, BLOCK_ROWS, length - q0, head_dim);
  for (int i = threadIdx.x; i < BLOCK_ROWS * acc_ld; i += blockDim.x) acc[i] = 0.0f;
  for (int i = threadIdx.x; i < BLOCK_ROWS; i += blockDim.x) {
    row_max[i] = -INFINITY;
    row_sum[i] = 0.0f;
  }

  const int r0 = warp * kWarpRows;  // this warp's first row in the block
  for (int k0 = 0; k0 < length; k0 += kKeyTile) {
    __syncthreads();  // every warp is done with the previous K/V tile
    load_tile(k_tile, ld, P, head_base + hidden + int64_t(k0) * stride, stride, kKeyTile,
              length - k0, head_dim);
    load_tile(v_tile, ld, P, head_base + 2 * hidden + int64_t(k0) * stride, stride, kKeyTile,
              length - k0, head_dim);
    __syncthreads();

    // scores[r0:r0+16, 0:64] = Q[r0:r0+16] . K^T
    for (int n = 0; n < kKeyTile / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> s_frag;
      wmma::fill_fragment(s_frag, 0.0f);
      for (int kk = 0; kk < P / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> q_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> k_frag;
        wmma::load_matrix_sync(q_frag, q_tile + r0 * ld + kk * 16, ld);
        wmma::load_matrix_sync(k_frag, k_tile + n * 16 * ld + kk * 16, ld);
        wmma::mma_sync(s_frag, q_frag, k_frag, s_frag);
      }
      wmma::store_matrix_sync(scores + r0 * (kKeyTile + 4) + n * 16, s_frag, kKeyTile + 4,
                              wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax: two lanes per row, 32 key columns each.
    {
      const int row = r0 + lane / 2, half = lane % 2;
      const float* s_row = scores + row * (kKeyTile + 4) + half * 32;
      T* p_row = probs + row * (kKeyTile + 8) + half * 32;
      const int valid_keys = min(kKeyTile, length - k0) - half * 32;  // may be <= 0
      float tile_max = -INFINITY;
      for (int c = 0; c < 32 && c < valid_keys; ++c) tile_max = fmaxf(tile_max, s_row[c] * scale);
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      const float old_max = row_max[row];
      const float new_max = fmaxf(old_max, tile_max);  // finite: key k0 is always valid
      float tile_sum = 0.0f;
      for (int c = 0; c < 32; ++c) {
        const float p = c < valid_keys ? expf(s_row[c] * scale - new_max) : 0.0f;
        p_row[c] = from_float<T>(p);
        tile_sum += p;
      }
      tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, 1);
      const float correction = expf(old_max - new_max);
      float* acc_row = acc + row * acc_ld;
      for (int c = half; c < P; c += 2) acc_row[c] *= correction;
      __syncwarp();  // both lanes have read old_max
      if (half == 0) {
        row_max[row] = new_max;
        row_sum[row] = row_sum[row] * correction + tile_sum;
      }
    }
    __syncwarp();

    // acc[r0:r0+16, 0:P] += probs[r0:r0+16, 0:64] . V
    for (int n = 0; n < P / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> o_frag;
      wmma::load_matrix_sync(o_frag, acc + r0 * acc_ld + n * 16, acc_ld, wmma::mem_row_major);
      for (int kk = 0; kk < kKeyTile / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> p_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> v_frag;
        wmma::load_matrix_sync(p_frag, probs + r0 * (kKeyTile + 8) + kk * 16, kKeyTile + 8);
        wmma::load_matrix_sync(v_frag, v_tile + kk * 16 * ld + n * 16, ld);
        wmma::mma_sync(o_frag, p_frag, v_frag, o_frag);
      }
      wmma::store_matrix_sync(acc + r0 * acc_ld + n * 16, o_frag, acc_ld, wmma::mem_row_major);
    }
    __syncwarp();
  }

  // out = acc / row_sum for this warp's valid rows and the real head columns.
  for (int i = lane; i < kWarpRows * head_dim; i += 32) {
    const int r = r0 + i / head_dim, c = i % head_dim;
    if (q0 + r < length) {
      out[(int64_t(first) + q0 + r) * hidden + int64_t(h) * head_dim + c] =
          from_float<T>(acc[r * acc_ld + c] / row_sum[r]);
    }
  }
}

template <typename T, int BLOCK_ROWS>
void launch_tensor_core(const T* qkv, const int32_t* cu_seqlens, T* out, int64_t batch,
                        int64_t max_seqlen, int64_t num_heads, int64_t head_dim,
                        cudaStream_t stream) {
  const TileLayout layout(int(head_dim), BLOCK_ROWS, sizeof(T));
  auto kernel = attention_tensor_core_kernel<T, BLOCK_ROWS>;
  // Raise the kernel's shared-memory limit once per device, to the most any head dim needs
  // (d = 256), rather than on every launch.
  int device = 0;
  check_cuda(cudaGetDevice(&device), "attention: cudaGetDevice");
  static std::mutex mutex;
  static std::set<int> raised;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (raised.count(device) == 0) {
      const TileLayout widest(256, BLOCK_ROWS, sizeof(T));
      check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      int(widest.bytes)),
                 "attention: shared memory for the tiles");
      raised.insert(device);
    }
  }
  const dim3 grid((max_seqlen + BLOCK_ROWS - 1) / BLOCK_ROWS, num_heads, batch);
  kernel<<<grid, BLOCK_ROWS / kWarpRows * 32, layout.bytes, stream>>>(
      qkv, cu_seqlens, out, int(num_heads), int(head_dim), 1.0f / sqrtf(float(head_dim)));
  check_launch("attention_tensor_core_kernel");
}

template <typename T>
void launch_simple(const T* qkv, const int32_t* cu_seqlens, T* out, int64_t batch,
                   int64_t max_seqlen, int64_t num_heads, int64_t head_dim, int64_t window,
                   cudaStream_t stream) {
  constexpr int kWarps = 4;
  const size_t shared = size_t(kWarps) * 2 * head_dim * sizeof(float);
  if (shared > 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(attention_simple_kernel<T>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)),
               "attention: shared memory for a wide head");
  }
  const dim3 grid((max_seqlen + kWarps - 1) / kWarps, num_heads, batch);
  attention_simple_kernel<T><<<grid, kWarps * 32, shared, stream>>>(
      qkv, cu_seqlens, out, int(num_heads), int(head_dim), 1.0f / sqrtf(float(head_dim)),
      int(window));
  check_launch("attention_simple_kernel");
}

template <typename T>
constexpr bool kHasTensorCorePath = !std::is_same<T, float>::value;

}  // namespace

template <typename T>
void attention_varlen(const T* qkv, const int32_t* cu_seqlens, T* out, int64_t batch,
                      int64_t max_seqlen, int64_t num_heads, int64_t head_dim, int64_t window,
                      cudaStream_t stream) {
  if (batch == 0 || max_seqlen == 0) return;
  // A window that covers every sequence is no window.
  if (window + 1 >= max_seqlen) window = 0;
  if constexpr (kHasTensorCorePath<T>) {
    // Windowed layers in fp16/bf16 go to FlashAttention-2's window (the engine's choice); the
    // tensor-core kernel here has none.
    if (head_dim % 8 == 0 && head_dim <= 256 && window == 0) {
      // 64 query rows per block while the tiles fit comfortably; 32 for wide heads.
      if (head_dim <= 128) {
        launch_tensor_core<T, 64>(qkv, cu_seqlens, out, batch, max_seqlen, num_heads, head_dim,
                                  stream);
      } else {
        launch_tensor_core<T, 32>(qkv, cu_seqlens, out, batch, max_seqlen, num_heads, head_dim,
                                  stream);
      }
      return;
    }
  }
  launch_simple(qkv, cu_seqlens, out, batch, max_seqlen, num_heads, head_dim, window, stream);
}

#define PYBERT_INSTANTIATE(T)                                                               \
  template void attention_varlen<T>(const T*, const int32_t*, T*, int64_t, int64_t, int64_t, \
                                    int64_t, int64_t, cudaStream_t);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(__half)
PYBERT_INSTANTIATE(__nv_bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cuda
