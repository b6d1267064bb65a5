#include "common.cuh"

namespace pybert::cuda {
namespace {

// One block per packed row: out[row] = token[tok] + segment[seg] + position[s]. The structs
// are passed by value (kernel parameters).
template <typename T>
__global__ void embed_packed_kernel(PackedIds ids, EmbeddingTables<T> tables, T* out) {
  const int32_t* cu_seqlens = ids.cu_seqlens;
  const int batch = int(ids.batch);
  const int64_t hidden = tables.hidden;
  const int row = blockIdx.x;
  T* dst = out + int64_t(row) * hidden;
  if (row >= cu_seqlens[batch]) {  // spare capacity (a captured graph's bucket): zeros
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = from_float<T>(0.0f);
    return;
  }
  const int b = sequence_of_row(cu_seqlens, batch, row);
  const int64_t s = row - cu_seqlens[b];
  const int64_t input = ids.seq_len > 0 ? b * ids.seq_len + s : row;  // padded or packed ids
  const T* tok = tables.token + ids.tokens[input] * hidden;
  const T* seg = tables.segment + ids.segments[input] * hidden;
  const T* pos = tables.position != nullptr ? tables.position + s * hidden : nullptr;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    dst[i] = from_float<T>(to_float(tok[i]) + to_float(seg[i]) +
                             (pos != nullptr ? to_float(pos[i]) : 0.0f));
  }
}

}  // namespace

template <typename T>
void embed_packed(const PackedIds& ids, const EmbeddingTables<T>& tables, T* out,
                  cudaStream_t stream) {
  if (ids.total_tokens == 0) return;
  const int threads = tables.hidden >= 256 ? 256 : 128;
  embed_packed_kernel<T><<<ids.total_tokens, threads, 0, stream>>>(ids, tables, out);
  check_launch("embed_packed");
}

#define PYBERT_INSTANTIATE(T)                                                            \
  template void embed_packed<T>(const PackedIds&, const EmbeddingTables<T>&, T*,        \
                                cudaStream_t);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(__half)
PYBERT_INSTANTIATE(__nv_bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cuda
