#include "common.cuh"

namespace pybert::cuda {
namespace {

// One block per packed row: out[row] = token_table[tok] + segment_table[seg] + pos_table[s].
template <typename T>
__global__ void embed_packed_kernel(const int64_t* tokens, const int64_t* segments,
                                    const int32_t* cu_seqlens, const T* token_table,
                                    const T* segment_table, const T* pos_table, T* out,
                                    int batch, int64_t seq_len, int64_t hidden) {
  const int row = blockIdx.x;
  T* dst = out + int64_t(row) * hidden;
  if (row >= cu_seqlens[batch]) {  // spare capacity (a captured graph's bucket): zeros
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = from_float<T>(0.0f);
    return;
  }
  const int b = sequence_of_row(cu_seqlens, batch, row);
  const int64_t s = row - cu_seqlens[b];
  const int64_t input = seq_len > 0 ? b * seq_len + s : row;  // padded or packed ids
  const T* tok = token_table + tokens[input] * hidden;
  const T* seg = segment_table + segments[input] * hidden;
  const T* pos = pos_table + s * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    dst[i] = from_float<T>(to_float(tok[i]) + to_float(seg[i]) + to_float(pos[i]));
  }
}

}  // namespace

template <typename T>
void embed_packed(const int64_t* tokens, const int64_t* segments, const int32_t* cu_seqlens,
                  const T* token_table, const T* segment_table, const T* pos_table, T* out,
                  int64_t batch, int64_t seq_len, int64_t total_tokens, int64_t hidden,
                  cudaStream_t stream) {
  if (total_tokens == 0) return;
  const int threads = hidden >= 256 ? 256 : 128;
  embed_packed_kernel<T><<<total_tokens, threads, 0, stream>>>(
      tokens, segments, cu_seqlens, token_table, segment_table, pos_table, out, int(batch),
      seq_len, hidden);
  check_launch("embed_packed");
}

#define PYBERT_INSTANTIATE(T)                                                                 \
  template void embed_packed<T>(const int64_t*, const int64_t*, const int32_t*, const T*,    \
                                const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t,  \
                                cudaStream_t);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(__half)
PYBERT_INSTANTIATE(__nv_bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cuda
