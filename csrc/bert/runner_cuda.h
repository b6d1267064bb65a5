// The BERT forward on the GPU, compiled once per scalar type in runner_cuda.cu so that the
// bindings (plain C++) can call it.
#pragma once

#include "../kernels/cuda/kernels.cuh"
#include "backend_cuda.h"
#include "model.h"
#include "weights.h"

namespace pybert {

// The GEMM weight matrices of `weights` prepared in `storage`, once per engine.
template <typename T>
CudaPreparedWeights prepare_cuda_weights(const BertConfig& config, const BertWeights<T>& weights,
                                         WeightStorage storage);

// Enqueues the whole forward on `stream`; no host synchronisation, no allocation.
// Every pointer in weights, inputs, outputs and both workspaces is device memory;
// gemm_workspace holds gemm.workspace_bytes(). inputs.stop_requested is not asked: the
// forward is only enqueued here, which takes far less time than running it.
template <typename T>
void bert_forward_cuda(const BertConfig& config, const BertWeights<T>& weights,
                       const CudaPreparedWeights& prepared, const BatchInputs& inputs,
                       const BatchOutputs<T>& outputs, T* workspace, cuda::CublasLtGemm& gemm,
                       void* gemm_workspace, cudaStream_t stream);

}  // namespace pybert
