// pybert._C.Engine in C++: the packed weights of one BERT and its forward pass, on the device
// and in the dtype of its weights. Its device engine (the weights bound and prepared for one
// device and dtype, over csrc/bert's runner) is made once, when the engine is built;
// module.cpp binds the class to Python.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "bert/backend_cpu.h"
#include "bert/model.h"
#include "bert/weights.h"

namespace pybert {

// The engine's weights as tensors, by the names of bert/weights.h.
using WeightTensors = std::unordered_map<std::string, at::Tensor>;

// Runs the forward of one model on one device in one scalar type; holds the typed weights and
// their prepared forms.
class DeviceEngine {
 public:
  virtual ~DeviceEngine() = default;
  // Every pointer is memory of the engine's device and dtype; outputs may be null (not asked
  // for). Returns false when in.stop_requested abandoned the forward.
  virtual bool forward(const BatchInputs& in, void* encoded, void* encoded_packed,
                       void* mlm_logits, void* nsp_logits, void* workspace) = 0;
};

// The storage a name means ("plain", "packed", "int8": pybert/engine/precision.py's names),
// parsed here once for both backends; an unknown name is refused.
WeightStorage parse_weight_storage(const std::string& name);

// The CPU device engine (float32 or bfloat16), in engine_cpu.cpp. storage: kPacked (MKL's or
// oneDNN's layout, where torch has them), kPlain or kInt8 (dynamic quantisation, float32
// only); plan: the GEMM paths and attention limit measured for this machine
// (pybert.engine.cpu_plan).
std::unique_ptr<DeviceEngine> make_cpu_engine(const BertConfig& config,
                                              const WeightTensors& weights,
                                              at::ScalarType dtype, WeightStorage storage,
                                              const CpuPlan& plan);
// The CUDA device engine (fp32, fp16, bf16), in engine_cuda.cpp; a build without CUDA links
// no_cuda.cpp instead, whose factory refuses with the reason. storage: kPacked or kPlain (the
// same on the GPU: cuBLASLt reads the plain matrix); kInt8 is refused.
std::unique_ptr<DeviceEngine> make_cuda_engine(const BertConfig& config,
                                               const WeightTensors& weights,
                                               at::ScalarType dtype, const at::Device& device,
                                               WeightStorage storage);
extern const bool kBuiltWithCuda;

class Engine {
 public:
  // Checks every weight against the layout of bert/weights.h: names, shapes, one dtype and
  // device, optional parts complete or absent. weight_storage: see make_cpu_engine and
  // make_cuda_engine.
  Engine(const BertConfig& config, const WeightTensors& weights,
         const std::string& weight_storage = "packed", const CpuPlan& cpu_plan = {});

  bool has_nsp() const { return has_nsp_; }
  bool has_mlm() const { return has_mlm_; }
  bool has_embedding_norm() const { return has_embedding_norm_; }

  struct Outputs {
    std::optional<at::Tensor> encoded, mlm_logits, nsp_logits;
    bool completed = true;  // false: stop_requested abandoned the forward
  };

  // tokens and segments are padded (B, S), giving encoded (B, S, H), or packed
  // (total_tokens), giving encoded (total_tokens, H). The caller (pybert.Engine) has validated
  // ids, lengths and positions; the checks here keep a wrong call from reading out of bounds
  // where they can be made without a sync.
  Outputs forward(const at::Tensor& tokens, const at::Tensor& segments,
                  const at::Tensor& cu_seqlens, int64_t total_tokens, int64_t max_seqlen,
                  const std::optional<at::Tensor>& pred_positions, bool with_encoded,
                  bool with_nsp, std::function<bool()> stop_requested);

 private:
  // The steps of forward: the batch checked into the runner's inputs (no stop_requested yet),
  // the output tensors it asks for, and the workspace (CPU: the kept one when it is free,
  // locked through `reuse` for the forward).
  BatchInputs checked_inputs(const at::Tensor& tokens, const at::Tensor& segments,
                             const at::Tensor& cu_seqlens, int64_t total_tokens,
                             int64_t max_seqlen, const std::optional<at::Tensor>& pred_positions,
                             bool with_nsp) const;
  Outputs allocate_outputs(const BatchInputs& in, bool with_encoded, bool with_mlm) const;
  at::Tensor workspace_for(const BatchInputs& in, std::unique_lock<std::mutex>& reuse);

  BertConfig config_;
  at::Device device_{at::kCPU};
  at::ScalarType dtype_ = at::kFloat;
  bool has_nsp_ = false, has_mlm_ = false, has_embedding_norm_ = false;
  WeightTensors weights_;  // keeps the storage behind the device engine's pointers alive
  std::unique_ptr<DeviceEngine> device_engine_;
  std::mutex workspace_mutex_;  // held by the forward using workspace_
  at::Tensor workspace_;        // CPU: the largest workspace asked for so far
};

// Points each field of `weights` at its tensor in `tensors` (absent parts stay null).
template <typename T>
BertWeights<T> bind_weights(const BertConfig& config, const WeightTensors& tensors) {
  BertWeights<T> weights;
  for_each_weight(config, weights, [&](const WeightSpec& spec, const T*& field) {
    auto found = tensors.find(spec.name);
    if (found != tensors.end()) field = static_cast<const T*>(found->second.data_ptr());
  });
  return weights;
}

}  // namespace pybert
