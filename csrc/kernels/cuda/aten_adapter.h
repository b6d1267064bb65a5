// Attention by torch's own fused kernels, for the shapes where they beat kernels/cuda's
// (benchmarks/RESULTS.md, "GPU attention"): FlashAttention-2's varlen forward for fp16/bf16 and
// the memory-efficient (CUTLASS) varlen forward for fp32, both called through ATen on the
// packed QKV rows. The contract is cuda::attention_varlen's (packed tokens, no padding):
// out[t, head h] = softmax_j(q_t . k_j / sqrt(d)) v_j over the keys j of t's sequence.
//
// This header is torch-free, so the runner (nvcc, no torch include path) can call it; the one
// file behind it, aten_adapter.cpp (the twin of kernels/cpu/aten/), is the CUDA
// side's only door to ATen.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <type_traits>

namespace pybert::cuda {

enum class AttentionKernel {
  kOwn,              // kernels/cuda/attention.cu
  kFlash,            // torch's FlashAttention-2 (fp16/bf16; head_dim % 8 == 0, <= 256)
  kMemoryEfficient,  // torch's memory-efficient attention (fp32 here; head_dim % 4 == 0)
};

// The storage types, as library_attention_varlen takes them.
enum class ScalarCode { kFloat, kHalf, kBFloat16 };

template <typename T>
constexpr ScalarCode scalar_code() {
  if constexpr (sizeof(T) == 4) return ScalarCode::kFloat;
  else if constexpr (std::is_same_v<T, __half>) return ScalarCode::kHalf;
  else return ScalarCode::kBFloat16;
}

// The kernel the engine runs for this storage type and head dim: the fastest measured that
// accepts it.
AttentionKernel choose_attention_kernel(ScalarCode scalar, int64_t head_dim);

// The attention's output rows (total_tokens, num_heads * head_dim), in memory torch's caching
// allocator lent the call: `owner` keeps it alive (stream-ordered) until it is released.
struct AttentionResult {
  const void* rows = nullptr;
  std::shared_ptr<void> owner;
};

// Runs `kernel` (kFlash or kMemoryEfficient) on torch's current stream of device
// `device_index`, which must be `stream` (the engine enqueues everything on torch's current
// stream; a mismatch throws std::invalid_argument rather than racing). window > 0 (keys with
// |i - j| <= window; FlashAttention-2's window_size_left/right) needs kFlash.
AttentionResult library_attention_varlen(AttentionKernel kernel, ScalarCode scalar,
                                         const void* qkv, const int32_t* cu_seqlens,
                                         int64_t batch, int64_t total_tokens,
                                         int64_t max_seqlen, int64_t num_heads,
                                         int64_t head_dim, int64_t window, int device_index,
                                         cudaStream_t stream);

}  // namespace pybert::cuda
