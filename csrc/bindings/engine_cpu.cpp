// The Engine's CPU device engine: float32 or bfloat16 weights bound once and their matrices
// prepared once for the GEMM library; the forward of bert/runner_cpu.
#include "bert/runner_cpu.h"
#include "engine.h"

namespace pybert {
namespace {

template <typename T>
class CpuEngine : public DeviceEngine {
 public:
  CpuEngine(const BertConfig& config, const WeightTensors& weights, cpu::WeightStorage storage,
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

cpu::WeightStorage parse_weight_storage(const std::string& name, at::ScalarType dtype) {
  if (name == "int8") {
    TORCH_CHECK_VALUE(dtype == at::kFloat,
                      "int8 quantisation takes float32 weights (activations are quantised from "
                      "float32), got ", c10::toString(dtype));
    TORCH_CHECK_VALUE(cpu::weight_storage_supported<float>(cpu::WeightStorage::kInt8),
                      "int8 needs oneDNN's int8 GEMM (onednn::qlinear_pointwise), which this "
                      "build of torch lacks");
    return cpu::WeightStorage::kInt8;
  }
  if (name == "packed") return cpu::WeightStorage::kPacked;
  TORCH_CHECK_VALUE(name == "plain", "weight_storage must be 'packed', 'plain' or 'int8', got '",
                    name, "'");
  return cpu::WeightStorage::kPlain;
}

}  // namespace

std::unique_ptr<DeviceEngine> make_cpu_engine(const BertConfig& config,
                                              const WeightTensors& weights,
                                              at::ScalarType dtype,
                                              const std::string& weight_storage,
                                              const CpuPlan& plan) {
  const cpu::WeightStorage storage = parse_weight_storage(weight_storage, dtype);
  if (dtype == at::kBFloat16) {
    return std::make_unique<CpuEngine<cpu::bfloat16>>(config, weights, storage, plan);
  }
  TORCH_CHECK_VALUE(dtype == at::kFloat,
                    "Engine: the CPU kernels compute in float32 or bfloat16, got ",
                    c10::toString(dtype));
  return std::make_unique<CpuEngine<float>>(config, weights, storage, plan);
}

}  // namespace pybert
