// torch.ops.pybert.* on the CPU: the float32 and bfloat16 kernels of kernels/cpu, run on the
// validated host copies of their index arguments.
#include <torch/library.h>

#include <tuple>

#include "kernels/cpu/kernels.h"
#include "op_checks.h"

namespace pybert::ops_cpu {
namespace {

// Calls fn(T{}) with the kernels' scalar type for dtype.
template <typename Fn>
void dispatch_cpu_scalar(at::ScalarType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case at::kFloat: fn(float{}); return;
    case at::kBFloat16: fn(cpu::bfloat16{}); return;
    default:
      TORCH_CHECK(false, op, ": the CPU kernels compute in float32 or bfloat16, got ",
                  c10::toString(dtype));
  }
}

at::Tensor gemm_bias_act(const at::Tensor& a, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, int64_t activation) {
  const GemmArgs args = check_gemm_bias_act(a, weight, bias, activation);
  at::Tensor out = at::empty({args.m, args.n}, a.options());
  dispatch_cpu_scalar(a.scalar_type(), "gemm_bias_act", [&](auto tag) {
    using T = decltype(tag);
    cpu::gemm_bias_act(ptr<T>(a), ptr<T>(weight), ptr_or_null<T>(bias), nullptr, ptr<T>(out),
                       args.m, args.n, args.k, args.act);
  });
  return out;
}

at::Tensor embed_packed(const at::Tensor& tokens, const at::Tensor& segments,
                        const at::Tensor& cu_seqlens, int64_t total_tokens,
                        const at::Tensor& token_table, const at::Tensor& segment_table,
                        const at::Tensor& pos_table) {
  const EmbedArgs args = check_embed_packed(tokens, segments, cu_seqlens, total_tokens,
                                            token_table, segment_table, pos_table);
  at::Tensor out = at::empty({args.total_tokens, args.hidden}, token_table.options());
  dispatch_cpu_scalar(token_table.scalar_type(), "embed_packed", [&](auto tag) {
    using T = decltype(tag);
    cpu::embed_packed(
        PackedIds{args.tokens.data_ptr<int64_t>(), args.segments.data_ptr<int64_t>(),
                  args.seqlens.cu_seqlens.data_ptr<int32_t>(), args.batch, args.seq_len,
                  args.total_tokens},
        EmbeddingTables<T>{ptr<T>(token_table), ptr<T>(segment_table), ptr<T>(pos_table),
                           args.hidden},
        ptr<T>(out));
  });
  return out;
}

at::Tensor add_layernorm(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                         const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         double eps) {
  check_add_layernorm(x, residual, weight, bias, eps);
  at::Tensor out = at::empty_like(x);
  dispatch_cpu_scalar(x.scalar_type(), "add_layernorm", [&](auto tag) {
    using T = decltype(tag);
    cpu::add_layernorm(ptr<T>(x), ptr_or_null<T>(residual), ptr<T>(weight),
                       ptr_or_null<T>(bias), ptr<T>(out), x.size(0), x.size(1),
                       static_cast<float>(eps));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> add_residual_layernorm(const at::Tensor& delta,
                                                          const at::Tensor& x,
                                                          const at::Tensor& weight,
                                                          const std::optional<at::Tensor>& bias,
                                                          double eps) {
  check_add_layernorm(x, delta, weight, bias, eps);
  at::Tensor sum = x.clone(), normed = at::empty_like(x);
  dispatch_cpu_scalar(x.scalar_type(), "add_residual_layernorm", [&](auto tag) {
    using T = decltype(tag);
    cpu::add_residual_layernorm(ptr<T>(delta), ptr<T>(sum), ptr<T>(weight),
                                ptr_or_null<T>(bias), ptr<T>(normed), x.size(0), x.size(1),
                                static_cast<float>(eps));
  });
  return {sum, normed};
}

cpu::AttentionPath attention_path_named(c10::string_view kernel) {
  if (kernel == "torch") return cpu::AttentionPath::kFlash;
  if (kernel == "own") return cpu::AttentionPath::kOwn;
  TORCH_CHECK(kernel == "mkl", "attention kernel must be \"torch\", \"own\" or \"mkl\", got \"",
              kernel, "\"");
  TORCH_CHECK(cpu::attention_path_available(cpu::AttentionPath::kMkl),
              "attention kernel \"mkl\": this torch has no MKL");
  return cpu::AttentionPath::kMkl;
}

// kernel: "own" (the tiled kernel) or "mkl" (MKL's batched sgemm) for float sequences of up to
// 512 tokens, the rest by torch's flash attention, which "torch" sends every sequence to.
at::Tensor attention_varlen(const at::Tensor& qkv, const at::Tensor& cu_seqlens,
                            int64_t max_seqlen, int64_t num_heads, c10::string_view kernel,
                            int64_t window) {
  const AttentionArgs args =
      check_attention_varlen(qkv, cu_seqlens, max_seqlen, num_heads, window);
  const cpu::AttentionPath path = attention_path_named(kernel);
  at::Tensor out = at::empty({qkv.size(0), qkv.size(1) / 3}, qkv.options());
  dispatch_cpu_scalar(qkv.scalar_type(), "attention_varlen", [&](auto tag) {
    using T = decltype(tag);
    cpu::attention_varlen(ptr<T>(qkv), args.seqlens.cu_seqlens.data_ptr<int32_t>(),
                          ptr<T>(out), args.batch, max_seqlen, num_heads, args.head_dim,
                          window, path);
  });
  return out;
}

at::Tensor rotary_qk(const at::Tensor& qkv, const at::Tensor& cu_seqlens, int64_t num_heads,
                     const at::Tensor& cos, const at::Tensor& sin) {
  const AttentionArgs args = check_rotary_qk(qkv, cu_seqlens, num_heads, cos, sin);
  at::Tensor out = qkv.clone();
  dispatch_cpu_scalar(qkv.scalar_type(), "rotary_qk", [&](auto tag) {
    using T = decltype(tag);
    cpu::rotary_qk(ptr<T>(out), args.seqlens.cu_seqlens.data_ptr<int32_t>(), args.batch,
                   num_heads, args.head_dim, ptr<T>(cos), ptr<T>(sin));
  });
  return out;
}

at::Tensor gated_activation(const at::Tensor& x, int64_t activation) {
  const Activation act = check_gated_activation(x, activation);
  at::Tensor out = at::empty({x.size(0), x.size(1) / 2}, x.options());
  dispatch_cpu_scalar(x.scalar_type(), "gated_activation", [&](auto tag) {
    using T = decltype(tag);
    cpu::gated_activation(ptr<T>(x), ptr<T>(out), x.size(0), x.size(1) / 2, act);
  });
  return out;
}

at::Tensor gather_rows(const at::Tensor& packed, const at::Tensor& cu_seqlens,
                       const std::optional<at::Tensor>& positions) {
  const GatherArgs args = check_gather_rows(packed, cu_seqlens, positions);
  at::Tensor out = at::empty({args.batch * args.num_positions, packed.size(1)},
                             packed.options());
  dispatch_cpu_scalar(packed.scalar_type(), "gather_rows", [&](auto tag) {
    using T = decltype(tag);
    cpu::gather_rows(ptr<T>(packed), args.seqlens.cu_seqlens.data_ptr<int32_t>(),
                     ptr_or_null<int64_t>(args.positions), ptr<T>(out), args.batch,
                     args.num_positions, packed.size(1));
  });
  return out;
}

at::Tensor unpack_padded(const at::Tensor& packed, const at::Tensor& cu_seqlens,
                         int64_t seq_len) {
  const HostSeqlens seqlens = check_unpack_padded(packed, cu_seqlens, seq_len);
  at::Tensor out = at::empty({seqlens.batch, seq_len, packed.size(1)}, packed.options());
  dispatch_cpu_scalar(packed.scalar_type(), "unpack_padded", [&](auto tag) {
    using T = decltype(tag);
    cpu::unpack_padded(ptr<T>(packed), seqlens.cu_seqlens.data_ptr<int32_t>(), ptr<T>(out),
                       seqlens.batch, seq_len, packed.size(1));
  });
  return out;
}

}  // namespace
}  // namespace pybert::ops_cpu

TORCH_LIBRARY_IMPL(pybert, CPU, m) { PYBERT_IMPL_OPS(m, pybert::ops_cpu) }
