// The BERT forward on the CPU (fp32), compiled once in runner_cpu.cpp so that the bindings call
// a plain function rather than instantiating the runner themselves.
#pragma once

#include "model.h"
#include "weights.h"

namespace pybert {

// Runs the whole forward on torch's CPU thread pool. `workspace` holds workspace_elements()
// floats. Returns false when inputs.stop_requested abandoned it between two layers.
bool bert_forward_cpu(const BertConfig& config, const BertWeights<float>& weights,
                      const BatchInputs& inputs, const BatchOutputs<float>& outputs,
                      float* workspace);

}  // namespace pybert
