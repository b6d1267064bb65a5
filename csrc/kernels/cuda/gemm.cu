// The GEMM adapter: cuBLASLt with bias (and ReLU) fused into the epilogue.
//
// Row-major out (m, n) = a (m, k) . weight (n, k)^T is, read column-major, out^T (n, m) =
// weight^T . a^T, with weight stored as a column-major (k, n) matrix: so cuBLASLt sees
// A = weight (transposed), B = a, D = out^T, and the bias runs along D's rows (length n).
#include <stdexcept>
#include <string>

#include "common.cuh"

namespace pybert::cuda {

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " +
                             cudaGetErrorString(status));
  }
}

void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("cuBLAS error in ") + what + ": status " +
                             std::to_string(int(status)));
  }
}

struct CublasLtGemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t weight_layout = nullptr, input_layout = nullptr, out_layout = nullptr;
  cublasLtMatmulAlgo_t algo{};

  ~Plan() {
    if (out_layout) cublasLtMatrixLayoutDestroy(out_layout);
    if (input_layout) cublasLtMatrixLayoutDestroy(input_layout);
    if (weight_layout) cublasLtMatrixLayoutDestroy(weight_layout);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

CublasLtGemm::CublasLtGemm(size_t workspace_bytes) : workspace_bytes_(workspace_bytes) {
  check_cublas(cublasLtCreate(&handle_), "cublasLtCreate");
}

CublasLtGemm::~CublasLtGemm() {
  for (auto& entry : plans_) delete entry.second;
  if (handle_) cublasLtDestroy(handle_);
}

const CublasLtGemm::Plan& CublasLtGemm::plan_for(cudaDataType_t type, int64_t m, int64_t n,
                                                 int64_t k, bool bias, bool relu) {
  const auto key = std::make_tuple(int(type), m, n, k, bias, relu);
  auto found = plans_.find(key);
  if (found != plans_.end()) return *found->second;

  auto* plan = new Plan();
  try {
    // fp32 accumulation for every type; CUBLAS_COMPUTE_32F never uses TF32.
    check_cublas(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                 "cublasLtMatmulDescCreate");
    const cublasOperation_t transpose = CUBLAS_OP_T, keep = CUBLAS_OP_N;
    check_cublas(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                                &transpose, sizeof(transpose)), "TRANSA");
    check_cublas(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &keep,
                                                sizeof(keep)), "TRANSB");
    cublasLtEpilogue_t epilogue = bias ? (relu ? CUBLASLT_EPILOGUE_RELU_BIAS
                                               : CUBLASLT_EPILOGUE_BIAS)
                                       : (relu ? CUBLASLT_EPILOGUE_RELU
                                               : CUBLASLT_EPILOGUE_DEFAULT);
    check_cublas(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                &epilogue, sizeof(epilogue)), "EPILOGUE");
    check_cublas(cublasLtMatrixLayoutCreate(&plan->weight_layout, type, k, n, k), "layout W");
    check_cublas(cublasLtMatrixLayoutCreate(&plan->input_layout, type, k, m, k), "layout A");
    check_cublas(cublasLtMatrixLayoutCreate(&plan->out_layout, type, n, m, n), "layout D");

    cublasLtMatmulPreference_t preference = nullptr;
    check_cublas(cublasLtMatmulPreferenceCreate(&preference), "preference");
    uint64_t bytes = workspace_bytes_;
    cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                         &bytes, sizeof(bytes));
    // Operands are 16-byte aligned at least: the engine's workspace regions start at
    // multiples of 64 scalars, and torch's allocator aligns every tensor it hands out.
    uint32_t alignment = 16;
    for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
      cublasLtMatmulPreferenceSetAttribute(preference, attr, &alignment, sizeof(alignment));
    }
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
        handle_, plan->desc, plan->weight_layout, plan->input_layout, plan->out_layout,
        plan->out_layout, preference, 1, &result, &returned);
    cublasLtMatmulPreferenceDestroy(preference);
    check_cublas(status, "cublasLtMatmulAlgoGetHeuristic");
    if (returned == 0) {
      throw std::runtime_error("cuBLASLt has no algorithm for a " + std::to_string(m) + "x" +
                               std::to_string(n) + "x" + std::to_string(k) + " GEMM");
    }
    plan->algo = result.algo;
  } catch (...) {
    delete plan;
    throw;
  }
  plans_[key] = plan;
  return *plan;
}

template <typename T>
constexpr cudaDataType_t data_type();
template <>
constexpr cudaDataType_t data_type<float>() { return CUDA_R_32F; }
template <>
constexpr cudaDataType_t data_type<__half>() { return CUDA_R_16F; }
template <>
constexpr cudaDataType_t data_type<__nv_bfloat16>() { return CUDA_R_16BF; }

template <typename T>
void CublasLtGemm::run(const T* a, const T* weight, const T* bias, T* out, int64_t m, int64_t n,
                       int64_t k, Activation act, void* workspace, cudaStream_t stream) {
  if (m == 0 || n == 0) return;
  const bool relu = act == Activation::kReLU;
  // The plan cache and the descriptor's bias pointer are shared; cublasLtMatmul reads the
  // descriptor when it enqueues, so the lock covers exactly that.
  std::lock_guard<std::mutex> lock(mutex_);
  const Plan& plan = plan_for(data_type<T>(), m, n, k, bias != nullptr, relu);
  if (bias != nullptr) {
    check_cublas(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                &bias, sizeof(bias)), "BIAS_POINTER");
  }
  const float alpha = 1.0f, beta = 0.0f;
  check_cublas(cublasLtMatmul(handle_, plan.desc, &alpha, weight, plan.weight_layout, a,
                              plan.input_layout, &beta, out, plan.out_layout, out,
                              plan.out_layout, &plan.algo, workspace, workspace_bytes_, stream),
               "cublasLtMatmul");
  if (!relu) apply_activation(out, m * n, act, stream);  // tanh and exact GELU
}

template void CublasLtGemm::run<float>(const float*, const float*, const float*, float*,
                                       int64_t, int64_t, int64_t, Activation, void*, cudaStream_t);
template void CublasLtGemm::run<__half>(const __half*, const __half*, const __half*, __half*,
                                        int64_t, int64_t, int64_t, Activation, void*, cudaStream_t);
template void CublasLtGemm::run<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*,
                                               const __nv_bfloat16*, __nv_bfloat16*, int64_t,
                                               int64_t, int64_t, Activation, void*,
                                               cudaStream_t);

}  // namespace pybert::cuda
