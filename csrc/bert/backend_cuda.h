// The CUDA backend of the runner: the kernels of kernels/cuda on one stream, with cuBLASLt
// for the GEMMs and torch's fused attention where it is faster. Scalar is float, __half or
// __nv_bfloat16.
#pragma once

#include <memory>
#include <unordered_map>

#include "../kernels/cuda/kernels.cuh"
#include "../kernels/cuda/aten_adapter.h"
#include "model.h"

namespace pybert {

// The engine's GEMM weights as prepared at load, found by the address of the plain matrix.
using CudaPreparedWeights = std::unordered_map<const void*, cuda::GemmWeight>;

template <typename T>
struct CudaBackend {
  using Scalar = T;

  cuda::CublasLtGemm& gemm;
  const CudaPreparedWeights& prepared;
  void* gemm_workspace;  // gemm.workspace_bytes() of device memory for this forward
  cudaStream_t stream;
  int device_index;
  std::shared_ptr<void> attention_rows;  // the library attention's last output

  void gemm_bias_act(const T* a, const T* w, const T* bias, T* out, int64_t m, int64_t n,
                     int64_t k, Activation act) {
    auto found = prepared.find(w);
    const cuda::GemmWeight weight = found != prepared.end()
        ? found->second
        : cuda::prepare_weight(w, n, k, WeightStorage::kPlain);
    gemm.run(a, weight, bias, out, m, n, k, act, gemm_workspace, stream);
  }
  void embed_packed(const PackedIds& ids, const EmbeddingTables<T>& tables, T* out) {
    cuda::embed_packed(ids, tables, out, stream);
  }
  void add_layernorm(const T* x, const T* residual, const T* gamma, const T* beta, T* out,
                     int64_t rows, int64_t hidden, float eps) {
    cuda::add_layernorm(x, residual, gamma, beta, out, rows, hidden, eps, stream);
  }
  void add_residual_layernorm(const T* delta, T* x, const T* gamma, const T* beta, T* normed,
                              int64_t rows, int64_t hidden, float eps) {
    cuda::add_residual_layernorm(delta, x, gamma, beta, normed, rows, hidden, eps, stream);
  }
  void rotary_qk(T* qkv, const int32_t* cu_seqlens, int64_t batch, int64_t total_tokens,
                 int64_t num_heads, int64_t head_dim, const T* cos, const T* sin) {
    cuda::rotary_qk(qkv, cu_seqlens, batch, total_tokens, num_heads, head_dim, cos, sin,
                    stream);
  }
  void gated_activation(const T* in, T* out, int64_t rows, int64_t width, Activation act) {
    cuda::gated_activation(in, out, rows, width, act, stream);
  }
  // torch's FlashAttention-2 / memory-efficient kernel where they take the shape (their
  // output rows stay alive until the next layer's attention replaces them), else ours. A
  // windowed layer takes FlashAttention-2's window, or our CUDA-core kernel's (fp32).
  const T* attention_varlen(const T* qkv, const int32_t* cu_seqlens, T* out, int64_t batch,
                            int64_t total_tokens, int64_t max_seqlen, int64_t num_heads,
                            int64_t head_dim, int64_t window) {
    const cuda::ScalarCode scalar = cuda::scalar_code<T>();
    cuda::AttentionKernel kernel = cuda::choose_attention_kernel(scalar, head_dim);
    if (window > 0 && kernel != cuda::AttentionKernel::kFlash) {
      kernel = cuda::AttentionKernel::kOwn;
    }
    if (kernel == cuda::AttentionKernel::kOwn) {
      cuda::attention_varlen(qkv, cu_seqlens, out, batch, max_seqlen, num_heads, head_dim,
                             window, stream);
      return out;
    }
    cuda::AttentionResult result = cuda::library_attention_varlen(
        kernel, scalar, qkv, cu_seqlens, batch, total_tokens, max_seqlen, num_heads,
        head_dim, window, device_index, stream);
    attention_rows = std::move(result.owner);
    return result.rows != nullptr ? static_cast<const T*>(result.rows) : out;
  }
  void gather_rows(const T* packed, const int32_t* cu_seqlens, const int64_t* positions,
                   T* out, int64_t batch, int64_t num_positions, int64_t hidden) {
    cuda::gather_rows(packed, cu_seqlens, positions, out, batch, num_positions, hidden, stream);
  }
  void unpack_padded(const T* packed, const int32_t* cu_seqlens, T* out, int64_t batch,
                     int64_t seq_len, int64_t hidden) {
    cuda::unpack_padded(packed, cu_seqlens, out, batch, seq_len, hidden, stream);
  }
};

}  // namespace pybert
