// CUDA kernels: pure compute on raw device pointers, sizes and a stream. No torch, no BERT.
//
// Each launcher has the contract of its CPU twin in ../cpu/kernels.h (same arguments, same
// row-major layouts, same packed-token convention), templated over the storage type T:
// float, __half or __nv_bfloat16. Arithmetic is in fp32 whatever T is. Launchers enqueue work
// on `stream` and never synchronise.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <list>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "../activation.h"
#include "../args.h"

namespace pybert::cuda {

// See cpu::embed_packed. All index arrays live on the device.
template <typename T>
void embed_packed(const PackedIds& ids, const EmbeddingTables<T>& tables, T* out,
                  cudaStream_t stream);

// See cpu::add_layernorm (residual and beta may be null; out may alias x or residual).
template <typename T>
void add_layernorm(const T* x, const T* residual, const T* gamma, const T* beta, T* out,
                   int64_t rows, int64_t hidden, float eps, cudaStream_t stream);

// See cpu::add_residual_layernorm.
template <typename T>
void add_residual_layernorm(const T* delta, T* x, const T* gamma, const T* beta, T* normed,
                            int64_t rows, int64_t hidden, float eps, cudaStream_t stream);

// See cpu::rotary_qk (total_tokens rows; spare ones beyond cu_seqlens[batch] untouched).
template <typename T>
void rotary_qk(T* qkv, const int32_t* cu_seqlens, int64_t batch, int64_t total_tokens,
               int64_t num_heads, int64_t head_dim, const T* cos, const T* sin,
               cudaStream_t stream);

// See cpu::gated_activation.
template <typename T>
void gated_activation(const T* in, T* out, int64_t rows, int64_t width, Activation act,
                      cudaStream_t stream);

// See cpu::attention_varlen. Fused: scores live in shared memory and registers, never in
// global memory. fp16/bf16 with head_dim % 8 == 0 and head_dim <= 256 and no window run on
// the tensor cores; every other case runs a CUDA-core kernel with the same result.
template <typename T>
void attention_varlen(const T* qkv, const int32_t* cu_seqlens, T* out, int64_t batch,
                      int64_t max_seqlen, int64_t num_heads, int64_t head_dim, int64_t window,
                      cudaStream_t stream);

// See cpu::gather_rows.
template <typename T>
void gather_rows(const T* packed, const int32_t* cu_seqlens, const int64_t* positions, T* out,
                 int64_t batch, int64_t num_positions, int64_t hidden, cudaStream_t stream);

// See cpu::unpack_padded.
template <typename T>
void unpack_padded(const T* packed, const int32_t* cu_seqlens, T* out, int64_t batch,
                   int64_t seq_len, int64_t hidden, cudaStream_t stream);

// x = act(x) elementwise over n values (the activations cuBLASLt has no epilogue for: tanh,
// and GELU in its exact erf form, where cuBLASLt's GELU epilogue is the tanh approximation).
template <typename T>
void apply_activation(T* x, int64_t n, Activation act, cudaStream_t stream);

// How a GEMM's weight matrix is stored (args.h). The GPU serves kPlain: the (n, k) matrix in
// the activations' type, where it is. A scaled storage (FP8 E4M3 with its scales) is one more
// value in args.h, a case in prepare_weight and the scale attributes in gemm.cu's descriptors:
// the runner and the bindings stay as they are.

// A weight matrix as CublasLtGemm::run takes it: its device data, element type and storage.
struct GemmWeight {
  const void* data = nullptr;
  cudaDataType_t type = CUDA_R_32F;
  WeightStorage storage = WeightStorage::kPlain;
};

// The weight (n, k) of scalar T prepared in `storage`, once, when an engine is built.
template <typename T>
GemmWeight prepare_weight(const T* weight, int64_t n, int64_t k, WeightStorage storage);

// cuBLASLt workspace of one GEMM call: enough for the split-K kernels of large GEMMs.
constexpr size_t kGemmWorkspaceBytes = 32 << 20;

// out[m, n] = act(sum_k a[m, k] * weight[n, k] + bias[n]) through cuBLASLt, with bias and
// ReLU fused into its epilogue. fp32 accumulation; fp32 inputs use strict fp32 (no TF32), so
// the fp32 engine holds 1e-5 relative error. Holds the cuBLASLt handle and a bounded cache of
// the algorithm chosen per shape bucket (the row count m rounded up to a power of two, since a
// packed batch has a different m almost every call). The first call of a bucket times the
// heuristic's best kCandidates algorithms on its own operands and keeps the fastest (that call
// waits for the GPU once); a call inside a CUDA graph's capture takes the heuristic's first
// guess, uncached. A call's descriptors live on
// its own stack and its workspace is its own (stream-ordered memory of workspace_bytes), so
// calls from several threads and streams share nothing but the cache, which is locked.
class CublasLtGemm {
 public:
  explicit CublasLtGemm(size_t workspace_bytes, size_t max_plans = 256);
  ~CublasLtGemm();
  CublasLtGemm(const CublasLtGemm&) = delete;
  CublasLtGemm& operator=(const CublasLtGemm&) = delete;

  // a, bias and out are of scalar T; weight is prepare_weight's (n, k) matrix.
  template <typename T>
  void run(const T* a, const GemmWeight& weight, const T* bias, T* out, int64_t m, int64_t n,
           int64_t k, Activation act, void* workspace, cudaStream_t stream);

  size_t workspace_bytes() const { return workspace_bytes_; }
  size_t cached_plans();

 private:
  static constexpr int kCandidates = 8;
  // (activation type, weight type, m bucket, n, k, epilogue)
  using PlanKey = std::tuple<int, int, int64_t, int64_t, int64_t, int>;
  struct Plan {
    cublasLtMatmulAlgo_t algo;
    std::list<PlanKey>::iterator lru_position;
  };
  // enqueue(algo) launches this call's GEMM with algo (defined and used in gemm.cu only).
  template <typename Enqueue>
  cublasLtMatmulAlgo_t algo_for(const PlanKey& key, const Enqueue& enqueue,
                                cudaStream_t stream);
  std::vector<cublasLtMatmulAlgo_t> ask_heuristic(cudaDataType_t type, cudaDataType_t weight_type,
                                                  int64_t m, int64_t n, int64_t k, int epilogue,
                                                  int count);

  cublasLtHandle_t handle_ = nullptr;
  size_t workspace_bytes_;
  size_t max_plans_;
  std::mutex mutex_;
  std::map<PlanKey, Plan> plans_;
  std::list<PlanKey> lru_;  // most recently used first
};

// Throws std::runtime_error naming the call when a CUDA or cuBLAS call fails.
void check_cuda(cudaError_t status, const char* what);
void check_cublas(cublasStatus_t status, const char* what);

}  // namespace pybert::cuda
