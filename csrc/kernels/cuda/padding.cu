#include "common.cuh"

namespace pybert::cuda {
namespace {

// One block per output row: out[b * P + p] = packed[cu_seqlens[b] + positions[b, p]].
template <typename T>
__global__ void gather_rows_kernel(const T* packed, const int32_t* cu_seqlens,
                                   const int64_t* positions, T* out, int64_t num_positions,
                                   int64_t hidden) {
  const int64_t slot = blockIdx.x;
  const int64_t b = slot / num_positions;
  const int64_t pos = positions ? positions[slot] : 0;
  const T* src = packed + (cu_seqlens[b] + pos) * hidden;
  T* dst = out + slot * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = src[i];
}

// One block per padded row (b, s): a copy of the packed row, or zeros past the sequence.
template <typename T>
__global__ void unpack_padded_kernel(const T* packed, const int32_t* cu_seqlens, T* out,
                                     int64_t seq_len, int64_t hidden) {
  const int64_t b = blockIdx.x / seq_len, s = blockIdx.x % seq_len;
  const int64_t length = cu_seqlens[b + 1] - cu_seqlens[b];
  T* dst = out + int64_t(blockIdx.x) * hidden;
  if (s < length) {
    const T* src = packed + (cu_seqlens[b] + s) * hidden;
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = src[i];
  } else {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = from_float<T>(0.0f);
  }
}

}  // namespace

template <typename T>
void gather_rows(const T* packed, const int32_t* cu_seqlens, const int64_t* positions, T* out,
                 int64_t batch, int64_t num_positions, int64_t hidden, cudaStream_t stream) {
  if (batch * num_positions == 0) return;
  gather_rows_kernel<T><<<batch * num_positions, 128, 0, stream>>>(
      packed, cu_seqlens, positions, out, num_positions, hidden);
  check_launch("gather_rows");
}

template <typename T>
void unpack_padded(const T* packed, const int32_t* cu_seqlens, T* out, int64_t batch,
                   int64_t seq_len, int64_t hidden, cudaStream_t stream) {
  if (batch * seq_len == 0) return;
  unpack_padded_kernel<T><<<batch * seq_len, 128, 0, stream>>>(packed, cu_seqlens, out,
                                                               seq_len, hidden);
  check_launch("unpack_padded");
}

#define PYBERT_INSTANTIATE(T)                                                                \
  template void gather_rows<T>(const T*, const int32_t*, const int64_t*, T*, int64_t,       \
                               int64_t, int64_t, cudaStream_t);                             \
  template void unpack_padded<T>(const T*, const int32_t*, T*, int64_t, int64_t, int64_t,   \
                                 cudaStream_t);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(__half)
PYBERT_INSTANTIATE(__nv_bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cuda
