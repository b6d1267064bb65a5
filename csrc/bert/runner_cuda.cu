#include "backend_cuda.h"
#include "runner.h"
#include "runner_cuda.h"

namespace pybert {

template <typename T>
void bert_forward_cuda(const BertConfig& config, const BertWeights<T>& weights,
                       const BatchInputs& inputs, const BatchOutputs<T>& outputs, T* workspace,
                       cuda::CublasLtGemm& gemm, void* gemm_workspace, cudaStream_t stream) {
  CudaBackend<T> backend{gemm, gemm_workspace, stream};
  bert_forward(backend, config, weights, inputs, outputs, workspace);
}

template void bert_forward_cuda<float>(const BertConfig&, const BertWeights<float>&,
                                       const BatchInputs&, const BatchOutputs<float>&, float*,
                                       cuda::CublasLtGemm&, void*, cudaStream_t);
template void bert_forward_cuda<__half>(const BertConfig&, const BertWeights<__half>&,
                                        const BatchInputs&, const BatchOutputs<__half>&, __half*,
                                        cuda::CublasLtGemm&, void*, cudaStream_t);
template void bert_forward_cuda<__nv_bfloat16>(const BertConfig&,
                                               const BertWeights<__nv_bfloat16>&,
                                               const BatchInputs&,
                                               const BatchOutputs<__nv_bfloat16>&,
                                               __nv_bfloat16*, cuda::CublasLtGemm&, void*,
                                               cudaStream_t);

}  // namespace pybert
