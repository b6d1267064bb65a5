#include "runner_cpu.h"

#include <algorithm>

#include "runner.h"

namespace pybert {

template <typename T>
PreparedWeights prepare_cpu_weights(const BertConfig& c, const BertWeights<T>& w,
                                    WeightStorage storage, const CpuPlan& plan) {
  PreparedWeights prepared;
  for_each_gemm_weight(c, w, [&](const T* weight, const T* bias, int64_t n, int64_t k) {
    auto chosen = plan.gemm.find({n, k});
    auto ready = cpu::prepare_weight(weight, bias, n, k, storage,
                                     chosen != plan.gemm.end() ? chosen->second
                                                               : cpu::GemmChoice{});
    if (ready) prepared.emplace(weight, std::move(ready));
  });
  return prepared;
}

template <typename T>
bool bert_forward_cpu(const BertConfig& config, const BertWeights<T>& weights,
                      const PreparedWeights& prepared, const CpuPlan& plan,
                      const BatchInputs& inputs, const BatchOutputs<T>& outputs, T* workspace) {
  CpuBackend<T> backend{&prepared, plan.attention_kernel, plan.attention_max_length};
  // The attention writes the context rows of real tokens only: spare rows (capacity beyond
  // cu_seqlens[batch]) get zeros, so that they stay finite in a reused workspace.
  const WorkspaceLayout layout(config, inputs);
  const int64_t real_rows = inputs.cu_seqlens[inputs.batch];
  std::fill(workspace + layout.context + real_rows * config.num_hiddens,
            workspace + layout.context + inputs.total_tokens * config.num_hiddens,
            cpu::from_float<T>(0.0f));
  if (!bert_forward(backend, config, weights, inputs, outputs, workspace)) return false;
  // The hidden state is checked packed (the padded copy holds the same rows), its real rows
  // only (spare capacity beyond cu_seqlens[batch] is never read), then the heads.
  const T* hidden =
      outputs.encoded_packed != nullptr ? outputs.encoded_packed : workspace + layout.x;
  const int64_t preds = inputs.batch * inputs.num_pred_positions;
  const bool finite =
      cpu::all_finite(hidden, real_rows * config.num_hiddens) &&
      (inputs.pred_positions == nullptr || preds == 0 ||
       cpu::all_finite(outputs.mlm_logits, preds * config.vocab_size)) &&
      (!inputs.with_nsp || cpu::all_finite(outputs.nsp_logits, inputs.batch * 2));
  if (!finite) cpu::fail_non_finite_forward();
  return true;
}

#define PYBERT_INSTANTIATE(T)                                                              \
  template PreparedWeights prepare_cpu_weights<T>(const BertConfig&, const BertWeights<T>&, \
                                                  WeightStorage, const CpuPlan&);       \
  template bool bert_forward_cpu<T>(const BertConfig&, const BertWeights<T>&,                \
                                    const PreparedWeights&, const CpuPlan&,                  \
                                    const BatchInputs&, const BatchOutputs<T>&, T*);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(cpu::bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert
