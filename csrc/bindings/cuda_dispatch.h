// What the CUDA bindings share: the C++ scalar type of a torch dtype and torch's current stream.
// Only the files built with CUDA include this header; they need no c10/cuda header, because
// torch's device-generic interfaces give the stream and the device guard.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace pybert {

// Calls fn(T{}) with the storage type the CUDA kernels use for `dtype`.
template <typename Fn>
void dispatch_cuda_scalar(at::ScalarType dtype, const char* what, Fn&& fn) {
  switch (dtype) {
    case at::kFloat: fn(float{}); return;
    case at::kHalf: fn(__half{}); return;
    case at::kBFloat16: fn(__nv_bfloat16{}); return;
    default:
      TORCH_CHECK(false, what, ": the CUDA kernels compute in float32, float16 or bfloat16, "
                  "got ", c10::toString(dtype));
  }
}

// torch's current stream on `device` (what the caller's torch.cuda.stream(...) selected).
inline cudaStream_t current_cuda_stream(const at::Device& device) {
  const c10::impl::VirtualGuardImpl guard_impl(c10::DeviceType::CUDA);
  return static_cast<cudaStream_t>(guard_impl.getStream(device).native_handle());
}

}  // namespace pybert
