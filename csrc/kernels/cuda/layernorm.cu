#include "common.cuh"

namespace pybert::cuda {
namespace {

// One block per row. The row (x + residual) is kept in shared memory as fp32, so the mean and
// the centred variance are two passes over fast memory (no E[x^2] - E[x]^2 cancellation).
template <typename T>
__global__ void add_layernorm_kernel(const T* x, const T* residual, const T* gamma,
                                     const T* beta, T* out, int64_t hidden, float eps) {
  extern __shared__ float row_values[];  // hidden floats
  __shared__ float scratch[32];
  const int64_t base = int64_t(blockIdx.x) * hidden;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float v = to_float(x[base + i]) + (residual ? to_float(residual[base + i]) : 0.0f);
    row_values[i] = v;
    sum += v;
  }
  const float mean = block_sum(sum, scratch) / float(hidden);
  float sq = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float c = row_values[i] - mean;
    sq += c * c;
  }
  const float rstd = rsqrtf(block_sum(sq, scratch) / float(hidden) + eps);
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    out[base + i] = from_float<T>((row_values[i] - mean) * rstd * to_float(gamma[i]) +
                                  to_float(beta[i]));
  }
}

}  // namespace

template <typename T>
void add_layernorm(const T* x, const T* residual, const T* gamma, const T* beta, T* out,
                   int64_t rows, int64_t hidden, float eps, cudaStream_t stream) {
  if (rows == 0) return;
  const int threads = hidden >= 1024 ? 512 : (hidden >= 256 ? 256 : 128);
  const size_t shared = size_t(hidden) * sizeof(float);
  if (shared > 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(add_layernorm_kernel<T>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)),
               "add_layernorm: shared memory for a wide row");
  }
  add_layernorm_kernel<T><<<rows, threads, shared, stream>>>(x, residual, gamma, beta, out,
                                                             hidden, eps);
  check_launch("add_layernorm");
}

#define PYBERT_INSTANTIATE(T)                                                               \
  template void add_layernorm<T>(const T*, const T*, const T*, const T*, T*, int64_t,      \
                                 int64_t, float, cudaStream_t);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(__half)
PYBERT_INSTANTIATE(__nv_bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cuda
