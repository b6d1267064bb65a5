// Rotary positions on Q and K of packed QKV rows: the CUDA twin of kernels/cpu/rotary.cpp
// (cpu::rotary_qk's contract).
#include "common.cuh"

namespace pybert::cuda {
namespace {

// One block per packed row; thread i of the row's 2 * num_heads * (d / 2) pairs rotates
// (x[i], x[i + d/2]) of one head's Q or K vector.
template <typename T>
__global__ void rotary_qk_kernel(T* qkv, const int32_t* cu_seqlens, int batch, int num_heads,
                                 int head_dim, const T* cos, const T* sin) {
  const int row = blockIdx.x;
  if (row >= cu_seqlens[batch]) return;  // spare capacity
  const int b = sequence_of_row(cu_seqlens, batch, row);
  const int64_t s = row - cu_seqlens[b];
  const int half = head_dim / 2, pairs = 2 * num_heads * half;
  T* vectors = qkv + int64_t(row) * 3 * num_heads * head_dim;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int vector = p / half, i = p % half;
    T* x = vectors + vector * head_dim;
    const float x1 = to_float(x[i]), x2 = to_float(x[i + half]);
    const float c = to_float(cos[s * half + i]), n = to_float(sin[s * half + i]);
    x[i] = from_float<T>(x1 * c - x2 * n);
    x[i + half] = from_float<T>(x2 * c + x1 * n);
  }
}

}  // namespace

template <typename T>
void rotary_qk(T* qkv, const int32_t* cu_seqlens, int64_t batch, int64_t total_tokens,
               int64_t num_heads, int64_t head_dim, const T* cos, const T* sin,
               cudaStream_t stream) {
  if (total_tokens == 0) return;
  rotary_qk_kernel<T><<<total_tokens, 128, 0, stream>>>(qkv, cu_seqlens, int(batch),
                                                        int(num_heads), int(head_dim), cos, sin);
  check_launch("rotary_qk");
}

#define PYBERT_INSTANTIATE(T)                                                                \
  template void rotary_qk<T>(T*, const int32_t*, int64_t, int64_t, int64_t, int64_t,        \
                             const T*, const T*, cudaStream_t);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(__half)
PYBERT_INSTANTIATE(__nv_bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cuda
