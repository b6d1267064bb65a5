// The activations cuBLASLt's epilogues lack (tanh, exact GELU, SiLU), in place on a GEMM's
// output, and a gated FFN's middle act(a) * g (cpu::gated_activation's contract).
#include "common.cuh"

namespace pybert::cuda {
namespace {

__device__ __forceinline__ float activate(float v, Activation act) {
  switch (act) {
    case Activation::kNone: return v;
    case Activation::kReLU: return fmaxf(v, 0.0f);
    case Activation::kTanh: return tanhf(v);
    case Activation::kGELU: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case Activation::kSiLU: return v / (1.0f + expf(-v));
  }
  return v;
}

template <typename T>
__global__ void activation_kernel(T* x, int64_t n, Activation act) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    x[i] = from_float<T>(activate(to_float(x[i]), act));
  }
}

// out[r, i] = act(in[r, i]) * in[r, width + i], one thread per output value (grid-stride).
template <typename T>
__global__ void gated_activation_kernel(const T* in, T* out, int64_t rows, int64_t width,
                                        Activation act) {
  const int64_t n = rows * width;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const T* a = in + (e / width) * 2 * width;
    const int64_t i = e % width;
    out[e] = from_float<T>(activate(to_float(a[i]), act) * to_float(a[width + i]));
  }
}

constexpr int kThreads = 256;

unsigned int blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < 65535 ? blocks : 65535);
}

}  // namespace

template <typename T>
void apply_activation(T* x, int64_t n, Activation act, cudaStream_t stream) {
  if (n == 0 || act == Activation::kNone) return;
  activation_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(x, n, act);
  check_launch("apply_activation");
}

template <typename T>
void gated_activation(const T* in, T* out, int64_t rows, int64_t width, Activation act,
                      cudaStream_t stream) {
  if (rows * width == 0) return;
  gated_activation_kernel<T><<<blocks_for(rows * width), kThreads, 0, stream>>>(in, out, rows,
                                                                                 width, act);
  check_launch("gated_activation");
}

#define PYBERT_INSTANTIATE(T)                                                               \
  template void apply_activation<T>(T*, int64_t, Activation, cudaStream_t);                 \
  template void gated_activation<T>(const T*, T*, int64_t, int64_t, Activation,            \
                                    cudaStream_t);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(__half)
PYBERT_INSTANTIATE(__nv_bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cuda
