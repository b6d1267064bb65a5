#include "common.cuh"

namespace pybert::cuda {
namespace {

template <typename T>
__global__ void activation_kernel(T* x, int64_t n, Activation act) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = to_float(x[i]);
    float y = v;
    switch (act) {
      case Activation::kReLU: y = fmaxf(v, 0.0f); break;
      case Activation::kTanh: y = tanhf(v); break;
      case Activation::kGELU: y = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); break;
      case Activation::kSiLU: y = v / (1.0f + expf(-v)); break;
      case Activation::kNone: break;
    }
    x[i] = from_float<T>(y);
  }
}

}  // namespace

template <typename T>
void apply_activation(T* x, int64_t n, Activation act, cudaStream_t stream) {
  if (n == 0 || act == Activation::kNone) return;
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  activation_kernel<T><<<int(blocks < 65535 ? blocks : 65535), threads, 0, stream>>>(x, n, act);
  check_launch("apply_activation");
}

template void apply_activation<float>(float*, int64_t, Activation, cudaStream_t);
template void apply_activation<__half>(__half*, int64_t, Activation, cudaStream_t);
template void apply_activation<__nv_bfloat16>(__nv_bfloat16*, int64_t, Activation,
                                              cudaStream_t);

}  // namespace pybert::cuda
