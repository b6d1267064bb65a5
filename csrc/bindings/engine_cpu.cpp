// The Engine's CPU device engine: float32 or bfloat16 weights bound once and their matrices
// prepared once for the GEMM library; the forward of bert/runner_cpu.
#include "bert/runner_cpu.h"
#include "engine.h"

namespace pybert {
namespace {

template <typename T>
class CpuEngine : public DeviceEngine {
 public:
  CpuEngine(const BertConfig& config, const WeightTensors& weights, WeightStorage storage,
            const CpuPlan& plan)
      : config_(config),
        plan_(plan),
        weights_(bind_weights<T>(config, weights)),
        prepared_(prepare_cpu_weights(config_, weights_, storage, plan_)) {}

  bool forward(const BatchInputs& in, void* encoded, void* encoded_packed, void* mlm_logits,
               void* nsp_logits, void* workspace) override {
    const BatchOutputs<T> out{static_cast<T*>(encoded), static_cast<T*>(encoded_packed),
                              static_cast<T*>(mlm_logits), static_cast<T*>(nsp_logits)};
    return bert_forward_cpu(config_, weights_, prepared_, plan_, in, out,
                            static_cast<T*>(workspace));
  }

 private:
  BertConfig config_;
  CpuPlan plan_;
  BertWeights<T> weights_;
  PreparedWeights prepared_;
};

void check_cpu_storage(WeightStorage storage, at::ScalarType dtype) {
  if (storage != WeightStorage::kInt8) return;
  TORCH_CHECK_VALUE(dtype == at::kFloat,
                    "int8 quantisation takes float32 weights (activations are quantised from "
                    "float32), got ", c10::toString(dtype));
  TORCH_CHECK_VALUE(cpu::weight_storage_supported<float>(WeightStorage::kInt8),
                    "int8 needs oneDNN's int8 GEMM (onednn::qlinear_pointwise), which this "
                    "build of torch lacks");
}

}  // namespace

std::unique_ptr<DeviceEngine> make_cpu_engine(const BertConfig& config,
                                              const WeightTensors& weights,
                                              at::ScalarType dtype,
                                              WeightStorage storage, const CpuPlan& plan) {
  check_cpu_storage(storage, dtype);
  if (dtype == at::kBFloat16) {
    return std::make_unique<CpuEngine<cpu::bfloat16>>(config, weights, storage, plan);
  }
  TORCH_CHECK_VALUE(dtype == at::kFloat,
                    "Engine: the CPU kernels compute in float32 or bfloat16, got ",
                    c10::toString(dtype));
  return std::make_unique<CpuEngine<float>>(config, weights, storage, plan);
}

}  // namespace pybert
