// torch's fused attention kernels on raw pointers (see aten_adapter.h).
#include "aten_adapter.h"

#include <ATen/ATen.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <optional>
#include <stdexcept>
#include <string>

namespace pybert::cuda {

AttentionKernel choose_attention_kernel(ScalarCode scalar, int64_t head_dim) {
  // FlashAttention-2 was 4.6x (64 x 128) to 6.7x (32 x 512) faster than our own tensor-core
  // kernel on an H100 (benchmarks/RESULTS.md); it takes fp16/bf16 and these head dims only.
  if (scalar != ScalarCode::kFloat) {
    return head_dim % 8 == 0 && head_dim <= 256 ? AttentionKernel::kFlash
                                                : AttentionKernel::kOwn;
  }
  // fp32: the memory-efficient kernel computes on the tensor cores in 3xTF32 (fp32 accuracy);
  // it wants 16-byte aligned rows of Q, K and V.
  return head_dim % 4 == 0 ? AttentionKernel::kMemoryEfficient : AttentionKernel::kOwn;
}

namespace {

at::ScalarType to_aten(ScalarCode scalar) {
  switch (scalar) {
    case ScalarCode::kFloat: return at::kFloat;
    case ScalarCode::kHalf: return at::kHalf;
    case ScalarCode::kBFloat16: return at::kBFloat16;
  }
  throw std::invalid_argument("library_attention_varlen: unknown scalar type");
}

}  // namespace

AttentionResult library_attention_varlen(AttentionKernel kernel, ScalarCode scalar,
                                         const void* qkv, const int32_t* cu_seqlens,
                                         int64_t batch, int64_t total_tokens,
                                         int64_t max_seqlen, int64_t num_heads,
                                         int64_t head_dim, int64_t window, int device_index,
                                         cudaStream_t stream) {
  if (batch == 0 || total_tokens == 0 || max_seqlen == 0) return {};
  if (window > 0 && kernel != AttentionKernel::kFlash) {
    throw std::invalid_argument("library_attention_varlen: a window needs FlashAttention-2");
  }
  // FlashAttention-2's window: keys i - left <= j <= i + right; -1 is none (torch's default
  // for an absent side).
  const int64_t side = window > 0 ? window : -1;
  const at::Device device(at::kCUDA, static_cast<c10::DeviceIndex>(device_index));
  const c10::impl::VirtualGuardImpl guard_impl(c10::DeviceType::CUDA);
  if (static_cast<cudaStream_t>(guard_impl.getStream(device).native_handle()) != stream) {
    throw std::invalid_argument(
        "library_attention_varlen: torch's kernels run on torch's current stream, which is "
        "not the stream this forward was enqueued on");
  }
  const auto options = at::TensorOptions().dtype(to_aten(scalar)).device(device);
  // Views of the packed rows, no copies: (tokens, 3, heads, head_dim), Q/K/V one select away.
  const at::Tensor rows = at::from_blob(const_cast<void*>(qkv),
                                        {total_tokens, 3, num_heads, head_dim}, options);
  const at::Tensor q = rows.select(1, 0), k = rows.select(1, 1), v = rows.select(1, 2);
  const at::Tensor cu = at::from_blob(const_cast<int32_t*>(cu_seqlens), {batch + 1},
                                      options.dtype(at::kInt));
  at::Tensor out;
  switch (kernel) {
    case AttentionKernel::kFlash:
      out = std::get<0>(at::_flash_attention_forward(q, k, v, cu, cu, max_seqlen, max_seqlen,
                                                     /*dropout_p=*/0.0, /*is_causal=*/false,
                                                     /*return_debug_mask=*/false,
                                                     /*scale=*/std::nullopt, side, side));
      break;
    case AttentionKernel::kMemoryEfficient:
      // Varlen form: one "batch" of all the tokens, sequences delimited by cu_seqlens.
      out = std::get<0>(at::_efficient_attention_forward(
          q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), /*bias=*/std::nullopt, cu, cu,
          max_seqlen, max_seqlen, /*dropout_p=*/0.0, /*custom_mask_type=*/0,
          /*compute_log_sumexp=*/false));
      break;
    case AttentionKernel::kOwn:
      throw std::invalid_argument("library_attention_varlen: kOwn is kernels/cuda's kernel");
  }
  // The runner reads the rows as (tokens, heads * head_dim) row-major.
  if (!out.is_contiguous()) out = out.contiguous();
  auto owner = std::make_shared<at::Tensor>(std::move(out));
  return {owner->data_ptr(), owner};
}

}  // namespace pybert::cuda
