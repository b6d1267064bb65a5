#include "runner_cpu.h"

#include "backend_cpu.h"
#include "runner.h"

namespace pybert {

bool bert_forward_cpu(const BertConfig& config, const BertWeights<float>& weights,
                      const BatchInputs& inputs, const BatchOutputs<float>& outputs,
                      float* workspace) {
  CpuBackend backend;
  return bert_forward(backend, config, weights, inputs, outputs, workspace);
}

}  // namespace pybert
