// The Engine's CUDA runner: weights of one scalar type bound once, a cuBLASLt handle of its
// own, the forward of bert/runner_cuda enqueued on torch's current stream.
#include <c10/core/DeviceGuard.h>

#include "bert/runner_cuda.h"
#include "cuda_dispatch.h"
#include "engine.h"

namespace pybert {

const bool kBuiltWithCuda = true;

namespace {

// cuBLASLt workspace size: enough for the split-K kernels of large GEMMs.
constexpr size_t kGemmWorkspaceBytes = 32 << 20;

template <typename T>
class CudaRunner : public DeviceRunner {
 public:
  CudaRunner(const BertConfig& config, const WeightTensors& weights, const at::Device& device)
      : config_(config), device_(device), weights_(bind_weights<T>(config, weights)) {
    const c10::DeviceGuard guard(device_);
    gemm_ = std::make_unique<cuda::CublasLtGemm>(kGemmWorkspaceBytes);
  }

  bool forward(const BatchInputs& in, void* encoded, void* encoded_packed, void* mlm_logits,
               void* nsp_logits, void* workspace) override {
    const c10::DeviceGuard guard(device_);
    // Stream-ordered scratch from torch's allocator: concurrent calls on different streams
    // never share it.
    const at::Tensor gemm_scratch = at::empty(
        {int64_t(kGemmWorkspaceBytes)}, at::TensorOptions().dtype(at::kByte).device(device_));
    const BatchOutputs<T> out{static_cast<T*>(encoded), static_cast<T*>(encoded_packed),
                              static_cast<T*>(mlm_logits), static_cast<T*>(nsp_logits)};
    bert_forward_cuda<T>(config_, weights_, in, out, static_cast<T*>(workspace), *gemm_,
                         gemm_scratch.data_ptr(), current_cuda_stream(device_));
    return true;
  }

 private:
  BertConfig config_;
  at::Device device_;
  BertWeights<T> weights_;
  std::unique_ptr<cuda::CublasLtGemm> gemm_;
};

}  // namespace

std::unique_ptr<DeviceRunner> make_cuda_runner(const BertConfig& config,
                                               const WeightTensors& weights,
                                               at::ScalarType dtype, const at::Device& device) {
  std::unique_ptr<DeviceRunner> runner;
  dispatch_cuda_scalar(dtype, "Engine", [&](auto tag) {
    runner = std::make_unique<CudaRunner<decltype(tag)>>(config, weights, device);
  });
  return runner;
}

}  // namespace pybert
