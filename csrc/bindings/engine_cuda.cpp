// The Engine's CUDA device engine: weights of one scalar type bound once, a cuBLASLt handle of its
// own, the forward of bert/runner_cuda enqueued on torch's current stream.
#include <c10/core/DeviceGuard.h>

#include "bert/runner_cuda.h"
#include "cuda_dispatch.h"
#include "engine.h"

namespace pybert {

const bool kBuiltWithCuda = true;

namespace {

using cuda::kGemmWorkspaceBytes;

template <typename T>
class CudaEngine : public DeviceEngine {
 public:
  CudaEngine(const BertConfig& config, const WeightTensors& weights, const at::Device& device,
             WeightStorage storage)
      : config_(config),
        device_(device),
        weights_(bind_weights<T>(config, weights)),
        prepared_(prepare_cuda_weights(config_, weights_, storage)) {
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
    bert_forward_cuda<T>(config_, weights_, prepared_, in, out, static_cast<T*>(workspace),
                         *gemm_, gemm_scratch.data_ptr(), current_cuda_stream(device_));
    return true;
  }

 private:
  BertConfig config_;
  at::Device device_;
  BertWeights<T> weights_;
  CudaPreparedWeights prepared_;
  std::unique_ptr<cuda::CublasLtGemm> gemm_;
};


}  // namespace

std::unique_ptr<DeviceEngine> make_cuda_engine(const BertConfig& config,
                                               const WeightTensors& weights,
                                               at::ScalarType dtype, const at::Device& device,
                                               WeightStorage requested) {
  TORCH_CHECK_VALUE(requested != WeightStorage::kInt8,
                    "weight_storage 'int8' is CPU-only: the GPU serves 'packed' or 'plain'");
  // cuBLASLt reads the plain matrix: 'packed' asks for nothing more on the GPU.
  const WeightStorage storage = WeightStorage::kPlain;
  std::unique_ptr<DeviceEngine> engine;
  dispatch_cuda_scalar(dtype, "Engine", [&](auto tag) {
    engine = std::make_unique<CudaEngine<decltype(tag)>>(config, weights, device, storage);
  });
  return engine;
}

}  // namespace pybert
