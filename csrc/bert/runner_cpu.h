// The BERT forward on the CPU (float or bfloat16), compiled once in runner_cpu.cpp so that the
// bindings call plain functions rather than instantiating the runner themselves.
#pragma once

#include "../kernels/cpu/kernels.h"
#include "backend_cpu.h"
#include "model.h"
#include "weights.h"

namespace pybert {

// The weight matrices of `weights` (layers, pooler, MLM transform and decoder) prepared for
// the GEMM library in `storage`, for the paths `plan` chose for their shapes; a matrix the
// library cannot prepare stays plain.
template <typename T>
PreparedWeights prepare_cpu_weights(const BertConfig& config, const BertWeights<T>& weights,
                                    WeightStorage storage, const CpuPlan& plan);

// Runs the whole forward on torch's CPU thread pool. `workspace` holds workspace_elements()
// scalars. Returns false when inputs.stop_requested abandoned it between two layers, and
// throws cpu::fail_non_finite_forward's error when the forward produced NaN or infinity
// (finite weights can still overflow: an attention score of 1e50).
template <typename T>
bool bert_forward_cpu(const BertConfig& config, const BertWeights<T>& weights,
                      const PreparedWeights& prepared, const CpuPlan& plan,
                      const BatchInputs& inputs, const BatchOutputs<T>& outputs, T* workspace);

}  // namespace pybert
