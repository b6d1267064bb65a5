#include "backend_cuda.h"
#include "runner.h"
#include "runner_cuda.h"

namespace pybert {

template <typename T>
CudaPreparedWeights prepare_cuda_weights(const BertConfig& config, const BertWeights<T>& weights,
                                         WeightStorage storage) {
  CudaPreparedWeights prepared;
  for_each_gemm_weight(config, weights, [&](const T* weight, const T*, int64_t n, int64_t k) {
    prepared.emplace(weight, cuda::prepare_weight(weight, n, k, storage));
  });
  return prepared;
}

template <typename T>
void bert_forward_cuda(const BertConfig& config, const BertWeights<T>& weights,
                       const CudaPreparedWeights& prepared, const BatchInputs& inputs,
                       const BatchOutputs<T>& outputs, T* workspace, cuda::CublasLtGemm& gemm,
                       void* gemm_workspace, cudaStream_t stream) {
  int device_index = 0;
  cuda::check_cuda(cudaGetDevice(&device_index), "bert_forward_cuda: the current device");
  CudaBackend<T> backend{gemm, prepared, gemm_workspace, stream, device_index, nullptr};
  BatchInputs enqueue_all = inputs;
  enqueue_all.stop_requested = nullptr;
  bert_forward(backend, config, weights, enqueue_all, outputs, workspace);
}

#define PYBERT_INSTANTIATE(T)                                                                 \
  template CudaPreparedWeights prepare_cuda_weights<T>(const BertConfig&,                     \
                                                       const BertWeights<T>&,                 \
                                                       WeightStorage);                  \
  template void bert_forward_cuda<T>(const BertConfig&, const BertWeights<T>&,                \
                                     const CudaPreparedWeights&, const BatchInputs&,          \
                                     const BatchOutputs<T>&, T*, cuda::CublasLtGemm&, void*,  \
                                     cudaStream_t);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(__half)
PYBERT_INSTANTIATE(__nv_bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert
