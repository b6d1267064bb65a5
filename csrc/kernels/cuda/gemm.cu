// The GEMM adapter: cuBLASLt with bias (and ReLU) fused into the epilogue, the algorithm of
// each shape bucket chosen by timing the heuristic's best candidates on its first call.
//
// Row-major out (m, n) = a (m, k) . weight (n, k)^T is, read column-major, out^T (n, m) =
// weight^T . a^T, with weight stored as a column-major (k, n) matrix: so cuBLASLt sees
// A = weight (transposed), B = a, D = out^T, and the bias runs along D's rows (length n).
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

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

namespace {

// The descriptors of one GEMM, initialised in place on the caller's stack: no allocation,
// nothing shared between calls (the bias pointer is per call).
struct MatmulDescriptors {
  cublasLtMatmulDescOpaque_t desc_storage;
  cublasLtMatrixLayoutOpaque_t weight_storage, input_storage, out_storage;
  cublasLtMatmulDesc_t desc = &desc_storage;
  cublasLtMatrixLayout_t weight = &weight_storage, input = &input_storage, out = &out_storage;

  // type: the activations' and the output's; weight_type: the weight's.
  MatmulDescriptors(cudaDataType_t type, cudaDataType_t weight_type, int64_t m, int64_t n,
                    int64_t k, int epilogue, const void* bias) {
    // fp32 accumulation for every type; CUBLAS_COMPUTE_32F never uses TF32.
    check_cublas(cublasLtMatmulDescInit(desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc");
    const cublasOperation_t transpose = CUBLAS_OP_T, keep = CUBLAS_OP_N;
    set(CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof(transpose));
    set(CUBLASLT_MATMUL_DESC_TRANSB, &keep, sizeof(keep));
    const auto lt_epilogue = static_cast<cublasLtEpilogue_t>(epilogue);
    set(CUBLASLT_MATMUL_DESC_EPILOGUE, &lt_epilogue, sizeof(lt_epilogue));
    if (bias != nullptr) set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
    check_cublas(cublasLtMatrixLayoutInit(weight, weight_type, k, n, k), "layout W");
    check_cublas(cublasLtMatrixLayoutInit(input, type, k, m, k), "layout A");
    check_cublas(cublasLtMatrixLayoutInit(out, type, n, m, n), "layout D");
  }

  void set(cublasLtMatmulDescAttributes_t attribute, const void* value, size_t size) {
    check_cublas(cublasLtMatmulDescSetAttribute(desc, attribute, value, size), "desc attribute");
  }
};

int epilogue_of(bool bias, bool relu) {
  return bias ? (relu ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
              : (relu ? CUBLASLT_EPILOGUE_RELU : CUBLASLT_EPILOGUE_DEFAULT);
}

// Times each candidate on the first call's own operands (a warm-up launch, then a few timed
// ones; the call's real launch comes after and overwrites the output) and returns the fastest.
// Candidates that refuse the shape are skipped; the heuristic's first choice is the default.
template <typename Enqueue>
cublasLtMatmulAlgo_t fastest(const std::vector<cublasLtMatmulAlgo_t>& candidates,
                             const Enqueue& enqueue, cudaStream_t stream) {
  if (candidates.size() == 1) return candidates.front();
  constexpr int kTimedLaunches = 5;
  cudaEvent_t start = nullptr, stop = nullptr;
  check_cuda(cudaEventCreate(&start), "cudaEventCreate");
  check_cuda(cudaEventCreate(&stop), "cudaEventCreate");
  cublasLtMatmulAlgo_t best = candidates.front();
  float best_ms = std::numeric_limits<float>::infinity();
  for (const cublasLtMatmulAlgo_t& candidate : candidates) {
    if (enqueue(candidate) != CUBLAS_STATUS_SUCCESS) continue;
    check_cuda(cudaEventRecord(start, stream), "cudaEventRecord");
    for (int i = 0; i < kTimedLaunches; ++i) enqueue(candidate);
    check_cuda(cudaEventRecord(stop, stream), "cudaEventRecord");
    check_cuda(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0.0f;
    check_cuda(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    if (ms < best_ms) {
      best_ms = ms;
      best = candidate;
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return best;
}

// The row-count bucket of a plan: m rounded up to a power of two.
int64_t bucket_of(int64_t m) {
  int64_t bucket = 1;
  while (bucket < m) bucket <<= 1;
  return bucket;
}

}  // namespace

CublasLtGemm::CublasLtGemm(size_t workspace_bytes, size_t max_plans)
    : workspace_bytes_(workspace_bytes), max_plans_(max_plans) {
  check_cublas(cublasLtCreate(&handle_), "cublasLtCreate");
}

CublasLtGemm::~CublasLtGemm() {
  if (handle_) cublasLtDestroy(handle_);
}

size_t CublasLtGemm::cached_plans() {
  std::lock_guard<std::mutex> lock(mutex_);
  return plans_.size();
}

std::vector<cublasLtMatmulAlgo_t> CublasLtGemm::ask_heuristic(cudaDataType_t type,
                                                              cudaDataType_t weight_type,
                                                              int64_t m, int64_t n, int64_t k,
                                                              int epilogue, int count) {
  const MatmulDescriptors d(type, weight_type, m, n, k, epilogue, nullptr);
  cublasLtMatmulPreferenceOpaque_t preference_storage;
  cublasLtMatmulPreference_t preference = &preference_storage;
  check_cublas(cublasLtMatmulPreferenceInit(preference), "preference");
  const uint64_t bytes = workspace_bytes_;
  check_cublas(cublasLtMatmulPreferenceSetAttribute(
                   preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &bytes, sizeof(bytes)),
               "preference workspace");
  // Operands are 16-byte aligned at least: the engine's workspace regions start at
  // multiples of 64 scalars, and torch's allocator aligns every tensor it hands out.
  const uint32_t alignment = 16;
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    check_cublas(cublasLtMatmulPreferenceSetAttribute(preference, attr, &alignment,
                                                      sizeof(alignment)),
                 "preference alignment");
  }
  std::vector<cublasLtMatmulHeuristicResult_t> results(count);
  int returned = 0;
  check_cublas(cublasLtMatmulAlgoGetHeuristic(handle_, d.desc, d.weight, d.input, d.out, d.out,
                                              preference, count, results.data(), &returned),
               "cublasLtMatmulAlgoGetHeuristic");
  std::vector<cublasLtMatmulAlgo_t> algos;
  for (int i = 0; i < returned; ++i) {
    if (results[i].state == CUBLAS_STATUS_SUCCESS) algos.push_back(results[i].algo);
  }
  if (algos.empty()) {
    throw std::runtime_error("cuBLASLt has no algorithm for a " + std::to_string(m) + "x" +
                             std::to_string(n) + "x" + std::to_string(k) + " GEMM");
  }
  return algos;
}

template <typename Enqueue>
cublasLtMatmulAlgo_t CublasLtGemm::algo_for(const PlanKey& key, const Enqueue& enqueue,
                                            cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = plans_.find(key);
  if (found != plans_.end()) {
    lru_.splice(lru_.begin(), lru_, found->second.lru_position);
    return found->second.algo;
  }
  const auto [type, weight_type, m_bucket, n, k, epilogue] = key;
  const std::vector<cublasLtMatmulAlgo_t> candidates =
      ask_heuristic(static_cast<cudaDataType_t>(type), static_cast<cudaDataType_t>(weight_type),
                    m_bucket, n, k, epilogue, kCandidates);
  // Inside a CUDA graph's capture nothing can be timed: take the heuristic's first choice
  // for this call and leave the bucket to be timed by the next call outside a capture.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check_cuda(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing");
  if (capture != cudaStreamCaptureStatusNone) return candidates.front();
  const cublasLtMatmulAlgo_t algo = fastest(candidates, enqueue, stream);
  if (plans_.size() >= max_plans_) {
    plans_.erase(lru_.back());
    lru_.pop_back();
  }
  lru_.push_front(key);
  plans_.emplace(key, Plan{algo, lru_.begin()});
  return algo;
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
GemmWeight prepare_weight(const T* weight, int64_t n, int64_t k, WeightStorage storage) {
  (void)n;  // the sizes matter to a storage that converts the matrix (FP8), not to kPlain
  (void)k;
  switch (storage) {
    case WeightStorage::kPlain: return GemmWeight{weight, data_type<T>(), storage};
    case WeightStorage::kPacked:
    case WeightStorage::kInt8: break;
  }
  throw std::invalid_argument("prepare_weight: the GPU serves plain weight storage only");
}

template <typename T>
void CublasLtGemm::run(const T* a, const GemmWeight& weight, const T* bias, T* out, int64_t m,
                       int64_t n, int64_t k, Activation act, void* workspace,
                       cudaStream_t stream) {
  if (m == 0 || n == 0) return;
  const bool relu = act == Activation::kReLU;
  const int epilogue = epilogue_of(bias != nullptr, relu);
  const cudaDataType_t type = data_type<T>();
  const MatmulDescriptors d(type, weight.type, m, n, k, epilogue, bias);
  const float alpha = 1.0f, beta = 0.0f;
  const auto enqueue = [&](const cublasLtMatmulAlgo_t& algo) {
    return cublasLtMatmul(handle_, d.desc, &alpha, weight.data, d.weight, a, d.input, &beta,
                          out, d.out, out, d.out, &algo, workspace, workspace_bytes_, stream);
  };
  const cublasLtMatmulAlgo_t algo =
      algo_for({int(type), int(weight.type), bucket_of(m), n, k, epilogue}, enqueue, stream);
  cublasStatus_t status = enqueue(algo);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE) {
    // The bucket's algorithm does not take this exact m: ask for one that does.
    status = enqueue(ask_heuristic(type, weight.type, m, n, k, epilogue, 1).front());
  }
  check_cublas(status, "cublasLtMatmul");
  if (!relu) apply_activation(out, m * n, act, stream);  // tanh and exact GELU
}

#define PYBERT_INSTANTIATE(T)                                                                 \
  template GemmWeight prepare_weight<T>(const T*, int64_t, int64_t, WeightStorage);           \
  template void CublasLtGemm::run<T>(const T*, const GemmWeight&, const T*, T*, int64_t,      \
                                     int64_t, int64_t, Activation, void*, cudaStream_t);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(__half)
PYBERT_INSTANTIATE(__nv_bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cuda
