// torch.ops.pybert.* on the GPU: the kernels of kernels/cuda in fp32, fp16 and bf16, enqueued
// on torch's current stream. The index arguments are checked on host copies (an op may
// synchronise; the Engine never does).
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include "cuda_dispatch.h"
#include "kernels/cuda/kernels.cuh"
#include "kernels/cuda/aten_adapter.h"
#include "op_checks.h"

namespace pybert::ops_cuda {
namespace {

using cuda::kGemmWorkspaceBytes;

// The cuBLASLt GEMM of the gemm_bias_act op on each device (an Engine has its own), created on
// first use and kept for the process.
cuda::CublasLtGemm& op_gemm(const at::Device& device) {
  static std::mutex mutex;
  static std::unordered_map<int, std::unique_ptr<cuda::CublasLtGemm>> per_device;
  std::lock_guard<std::mutex> lock(mutex);
  auto& gemm = per_device[device.index()];
  if (!gemm) gemm = std::make_unique<cuda::CublasLtGemm>(kGemmWorkspaceBytes);
  return *gemm;
}

at::Tensor gemm_bias_act(const at::Tensor& a, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, int64_t activation) {
  const GemmArgs args = check_gemm_bias_act(a, weight, bias, activation);
  const c10::DeviceGuard guard(a.device());
  at::Tensor out = at::empty({args.m, args.n}, a.options());
  // Stream-ordered scratch from torch's allocator: calls on other streams never share it.
  const at::Tensor scratch = at::empty({int64_t(kGemmWorkspaceBytes)},
                                       a.options().dtype(at::kByte));
  dispatch_cuda_scalar(a.scalar_type(), "gemm_bias_act", [&](auto tag) {
    using T = decltype(tag);
    const cuda::GemmWeight plain =
        cuda::prepare_weight(ptr<T>(weight), args.n, args.k, WeightStorage::kPlain);
    op_gemm(a.device()).run(ptr<T>(a), plain, ptr_or_null<T>(bias), ptr<T>(out), args.m,
                            args.n, args.k, args.act, scratch.data_ptr(),
                            current_cuda_stream(a.device()));
  });
  return out;
}

at::Tensor embed_packed(const at::Tensor& tokens, const at::Tensor& segments,
                        const at::Tensor& cu_seqlens, int64_t total_tokens,
                        const at::Tensor& token_table, const at::Tensor& segment_table,
                        const at::Tensor& pos_table) {
  const EmbedArgs args = check_embed_packed(tokens, segments, cu_seqlens, total_tokens,
                                            token_table, segment_table, pos_table);
  const c10::DeviceGuard guard(token_table.device());
  at::Tensor out = at::empty({args.total_tokens, args.hidden}, token_table.options());
  dispatch_cuda_scalar(token_table.scalar_type(), "embed_packed", [&](auto tag) {
    using T = decltype(tag);
    cuda::embed_packed(
        PackedIds{tokens.data_ptr<int64_t>(), segments.data_ptr<int64_t>(),
                  cu_seqlens.data_ptr<int32_t>(), args.batch, args.seq_len, args.total_tokens},
        EmbeddingTables<T>{ptr<T>(token_table), ptr<T>(segment_table), ptr<T>(pos_table),
                           args.hidden},
        ptr<T>(out), current_cuda_stream(token_table.device()));
  });
  return out;
}

at::Tensor add_layernorm(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                         const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         double eps) {
  check_add_layernorm(x, residual, weight, bias, eps);
  const c10::DeviceGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  dispatch_cuda_scalar(x.scalar_type(), "add_layernorm", [&](auto tag) {
    using T = decltype(tag);
    cuda::add_layernorm(ptr<T>(x), ptr_or_null<T>(residual), ptr<T>(weight),
                        ptr_or_null<T>(bias), ptr<T>(out), x.size(0), x.size(1),
                        static_cast<float>(eps), current_cuda_stream(x.device()));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> add_residual_layernorm(const at::Tensor& delta,
                                                          const at::Tensor& x,
                                                          const at::Tensor& weight,
                                                          const std::optional<at::Tensor>& bias,
                                                          double eps) {
  check_add_layernorm(x, delta, weight, bias, eps);
  const c10::DeviceGuard guard(x.device());
  at::Tensor sum = x.clone(), normed = at::empty_like(x);
  dispatch_cuda_scalar(x.scalar_type(), "add_residual_layernorm", [&](auto tag) {
    using T = decltype(tag);
    cuda::add_residual_layernorm(ptr<T>(delta), ptr<T>(sum), ptr<T>(weight),
                                 ptr_or_null<T>(bias), ptr<T>(normed), x.size(0), x.size(1),
                                 static_cast<float>(eps), current_cuda_stream(x.device()));
  });
  return {sum, normed};
}

// kernel "torch": the kernel the engine would pick (torch's FlashAttention-2 or memory-efficient
// kernel where they take the shape); "own": kernels/cuda's.
at::Tensor attention_varlen(const at::Tensor& qkv, const at::Tensor& cu_seqlens,
                            int64_t max_seqlen, int64_t num_heads, c10::string_view kernel,
                            int64_t window) {
  const AttentionArgs args =
      check_attention_varlen(qkv, cu_seqlens, max_seqlen, num_heads, window);
  TORCH_CHECK(kernel == "torch" || kernel == "own",
              "attention kernel must be \"torch\" or \"own\" on CUDA, got \"", kernel, "\"");
  const bool own_kernel = kernel == "own";
  const c10::DeviceGuard guard(qkv.device());
  const int64_t total_tokens = qkv.size(0), hidden = qkv.size(1) / 3;
  at::Tensor out;
  dispatch_cuda_scalar(qkv.scalar_type(), "attention_varlen", [&](auto tag) {
    using T = decltype(tag);
    const cuda::ScalarCode scalar = cuda::scalar_code<T>();
    cuda::AttentionKernel kernel =
        own_kernel ? cuda::AttentionKernel::kOwn
                   : cuda::choose_attention_kernel(scalar, args.head_dim);
    if (window > 0 && kernel != cuda::AttentionKernel::kFlash) {
      kernel = cuda::AttentionKernel::kOwn;  // the engine's choice for a windowed layer
    }
    const cudaStream_t stream = current_cuda_stream(qkv.device());
    if (kernel != cuda::AttentionKernel::kOwn) {
      cuda::AttentionResult result = cuda::library_attention_varlen(
          kernel, scalar, qkv.data_ptr(), cu_seqlens.data_ptr<int32_t>(), args.batch,
          total_tokens, max_seqlen, num_heads, args.head_dim, window, qkv.device().index(),
          stream);
      if (result.rows != nullptr) {
        out = at::from_blob(const_cast<void*>(result.rows), {total_tokens, hidden},
                            [owner = std::move(result.owner)](void*) {}, qkv.options());
        return;
      }
    }
    out = at::empty({total_tokens, hidden}, qkv.options());
    cuda::attention_varlen(ptr<T>(qkv), cu_seqlens.data_ptr<int32_t>(), ptr<T>(out),
                           args.batch, max_seqlen, num_heads, args.head_dim, window, stream);
  });
  return out;
}

at::Tensor rotary_qk(const at::Tensor& qkv, const at::Tensor& cu_seqlens, int64_t num_heads,
                     const at::Tensor& cos, const at::Tensor& sin) {
  const AttentionArgs args = check_rotary_qk(qkv, cu_seqlens, num_heads, cos, sin);
  const c10::DeviceGuard guard(qkv.device());
  at::Tensor out = qkv.clone();
  dispatch_cuda_scalar(qkv.scalar_type(), "rotary_qk", [&](auto tag) {
    using T = decltype(tag);
    cuda::rotary_qk(ptr<T>(out), cu_seqlens.data_ptr<int32_t>(), args.batch, qkv.size(0),
                    num_heads, args.head_dim, ptr<T>(cos), ptr<T>(sin),
                    current_cuda_stream(qkv.device()));
  });
  return out;
}

at::Tensor gated_activation(const at::Tensor& x, int64_t activation) {
  const Activation act = check_gated_activation(x, activation);
  const c10::DeviceGuard guard(x.device());
  at::Tensor out = at::empty({x.size(0), x.size(1) / 2}, x.options());
  dispatch_cuda_scalar(x.scalar_type(), "gated_activation", [&](auto tag) {
    using T = decltype(tag);
    cuda::gated_activation(ptr<T>(x), ptr<T>(out), x.size(0), x.size(1) / 2, act,
                           current_cuda_stream(x.device()));
  });
  return out;
}

at::Tensor gather_rows(const at::Tensor& packed, const at::Tensor& cu_seqlens,
                       const std::optional<at::Tensor>& positions) {
  const GatherArgs args = check_gather_rows(packed, cu_seqlens, positions);
  const c10::DeviceGuard guard(packed.device());
  at::Tensor out = at::empty({args.batch * args.num_positions, packed.size(1)},
                             packed.options());
  dispatch_cuda_scalar(packed.scalar_type(), "gather_rows", [&](auto tag) {
    using T = decltype(tag);
    cuda::gather_rows(ptr<T>(packed), cu_seqlens.data_ptr<int32_t>(),
                      ptr_or_null<int64_t>(positions), ptr<T>(out), args.batch,
                      args.num_positions, packed.size(1), current_cuda_stream(packed.device()));
  });
  return out;
}

at::Tensor unpack_padded(const at::Tensor& packed, const at::Tensor& cu_seqlens,
                         int64_t seq_len) {
  const HostSeqlens seqlens = check_unpack_padded(packed, cu_seqlens, seq_len);
  const c10::DeviceGuard guard(packed.device());
  at::Tensor out = at::empty({seqlens.batch, seq_len, packed.size(1)}, packed.options());
  dispatch_cuda_scalar(packed.scalar_type(), "unpack_padded", [&](auto tag) {
    using T = decltype(tag);
    cuda::unpack_padded(ptr<T>(packed), cu_seqlens.data_ptr<int32_t>(), ptr<T>(out),
                        seqlens.batch, seq_len, packed.size(1),
                        current_cuda_stream(packed.device()));
  });
  return out;
}

}  // namespace
}  // namespace pybert::ops_cuda

TORCH_LIBRARY_IMPL(pybert, CUDA, m) { PYBERT_IMPL_OPS(m, pybert::ops_cuda) }
