// pybert._C.Engine in C++: the packed weights of one BERT and its forward pass, on the device
// and in the dtype of its weights. The device's runner is chosen once, when the engine is built;
// module.cpp binds the class to Python.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "bert/model.h"
#include "bert/weights.h"

namespace pybert {

// The engine's weights as tensors, by the names of bert/weights.h.
using WeightTensors = std::unordered_map<std::string, at::Tensor>;

// Runs the forward of one model on one device in one scalar type; holds the typed weights.
class DeviceRunner {
 public:
  virtual ~DeviceRunner() = default;
  // Every pointer is memory of the engine's device and dtype; outputs may be null (not asked
  // for). Returns false when in.stop_requested abandoned the forward.
  virtual bool forward(const BatchInputs& in, void* encoded, void* encoded_packed,
                       void* mlm_logits, void* nsp_logits, void* workspace) = 0;
};

// The CPU runner (float32 or bfloat16), in engine_cpu.cpp. weight_format says how its weight
// matrices are held: "packed" (oneDNN's layout, where torch has oneDNN), "plain" or "int8"
// (dynamic quantisation, float32 only).
std::unique_ptr<DeviceRunner> make_cpu_runner(const BertConfig& config,
                                              const WeightTensors& weights,
                                              at::ScalarType dtype,
                                              const std::string& weight_format);
// The CUDA runner (fp32, fp16, bf16), in engine_cuda.cpp; a build without CUDA links
// no_cuda.cpp instead, whose runner factory refuses with the reason.
std::unique_ptr<DeviceRunner> make_cuda_runner(const BertConfig& config,
                                               const WeightTensors& weights,
                                               at::ScalarType dtype, const at::Device& device);
extern const bool kBuiltWithCuda;

class Engine {
 public:
  // Checks every weight against the layout of bert/weights.h: names, shapes, one dtype and
  // device, optional parts complete or absent. weight_format: see make_cpu_runner (CPU only;
  // the CUDA runner takes "packed", its cuBLASLt layout being the plain one).
  Engine(const BertConfig& config, const WeightTensors& weights,
         const std::string& weight_format = "packed");

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
  BertConfig config_;
  at::Device device_{at::kCPU};
  at::ScalarType dtype_ = at::kFloat;
  bool has_nsp_ = false, has_mlm_ = false, has_embedding_norm_ = false;
  WeightTensors weights_;  // keeps the storage behind the runner's pointers alive
  std::unique_ptr<DeviceRunner> runner_;
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
