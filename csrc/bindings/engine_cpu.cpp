// The Engine's CPU runner: fp32 weights bound once, the forward of bert/runner_cpu.
#include "bert/runner_cpu.h"
#include "engine.h"

namespace pybert {
namespace {

class CpuRunner : public DeviceRunner {
 public:
  CpuRunner(const BertConfig& config, const WeightTensors& weights)
      : config_(config), weights_(bind_weights<float>(config, weights)) {}

  bool forward(const BatchInputs& in, void* encoded, void* encoded_packed, void* mlm_logits,
               void* nsp_logits, void* workspace) override {
    const BatchOutputs<float> out{static_cast<float*>(encoded),
                                  static_cast<float*>(encoded_packed),
                                  static_cast<float*>(mlm_logits),
                                  static_cast<float*>(nsp_logits)};
    return bert_forward_cpu(config_, weights_, in, out, static_cast<float*>(workspace));
  }

 private:
  BertConfig config_;
  BertWeights<float> weights_;
};

}  // namespace

std::unique_ptr<DeviceRunner> make_cpu_runner(const BertConfig& config,
                                              const WeightTensors& weights) {
  return std::make_unique<CpuRunner>(config, weights);
}

}  // namespace pybert
