// torch.ops.pybert.* on the CPU: the fp32 kernels of kernels/cpu, run on the validated host
// copies of their index arguments.
#include <torch/library.h>

#include "kernels/cpu/kernels.h"
#include "op_checks.h"

namespace pybert::ops_cpu {
namespace {

void require_float32(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": the CPU kernels compute in float32, got ",
              c10::toString(t.scalar_type()));
}

at::Tensor gemm_bias_act(const at::Tensor& a, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, int64_t activation) {
  const GemmArgs args = check_gemm_bias_act(a, weight, bias, activation);
  require_float32(a, "gemm_bias_act");
  at::Tensor out = at::empty({args.m, args.n}, a.options());
  cpu::gemm_bias_act(ptr<float>(a), ptr<float>(weight), ptr_or_null<float>(bias),
                     ptr<float>(out), args.m, args.n, args.k, args.act);
  return out;
}

at::Tensor embed_packed(const at::Tensor& tokens, const at::Tensor& segments,
                        const at::Tensor& cu_seqlens, int64_t total_tokens,
                        const at::Tensor& token_table, const at::Tensor& segment_table,
                        const at::Tensor& pos_table) {
  const EmbedArgs args = check_embed_packed(tokens, segments, cu_seqlens, total_tokens,
                                            token_table, segment_table, pos_table);
  require_float32(token_table, "embed_packed");
  at::Tensor out = at::empty({args.total_tokens, args.hidden}, token_table.options());
  cpu::embed_packed(args.tokens.data_ptr<int64_t>(), args.segments.data_ptr<int64_t>(),
                    args.seqlens.cu_seqlens.data_ptr<int32_t>(), ptr<float>(token_table),
                    ptr<float>(segment_table), ptr<float>(pos_table), ptr<float>(out),
                    args.batch, args.seq_len, args.total_tokens, args.hidden);
  return out;
}

at::Tensor add_layernorm(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                         const at::Tensor& weight, const at::Tensor& bias, double eps) {
  check_add_layernorm(x, residual, weight, bias, eps);
  require_float32(x, "add_layernorm");
  at::Tensor out = at::empty_like(x);
  cpu::add_layernorm(ptr<float>(x), ptr_or_null<float>(residual), ptr<float>(weight),
                     ptr<float>(bias), ptr<float>(out), x.size(0), x.size(1),
                     static_cast<float>(eps));
  return out;
}

at::Tensor attention_varlen(const at::Tensor& qkv, const at::Tensor& cu_seqlens,
                            int64_t max_seqlen, int64_t num_heads) {
  const AttentionArgs args = check_attention_varlen(qkv, cu_seqlens, max_seqlen, num_heads);
  require_float32(qkv, "attention_varlen");
  at::Tensor out = at::empty({qkv.size(0), qkv.size(1) / 3}, qkv.options());
  cpu::attention_varlen(ptr<float>(qkv), args.seqlens.cu_seqlens.data_ptr<int32_t>(),
                        ptr<float>(out), args.batch, max_seqlen, num_heads, args.head_dim);
  return out;
}

at::Tensor gather_rows(const at::Tensor& packed, const at::Tensor& cu_seqlens,
                       const std::optional<at::Tensor>& positions) {
  const GatherArgs args = check_gather_rows(packed, cu_seqlens, positions);
  require_float32(packed, "gather_rows");
  at::Tensor out = at::empty({args.batch * args.num_positions, packed.size(1)},
                             packed.options());
  cpu::gather_rows(ptr<float>(packed), args.seqlens.cu_seqlens.data_ptr<int32_t>(),
                   ptr_or_null<int64_t>(args.positions), ptr<float>(out), args.batch,
                   args.num_positions, packed.size(1));
  return out;
}

at::Tensor unpack_padded(const at::Tensor& packed, const at::Tensor& cu_seqlens,
                         int64_t seq_len) {
  const HostSeqlens seqlens = check_unpack_padded(packed, cu_seqlens, seq_len);
  require_float32(packed, "unpack_padded");
  at::Tensor out = at::empty({seqlens.batch, seq_len, packed.size(1)}, packed.options());
  cpu::unpack_padded(ptr<float>(packed), seqlens.cu_seqlens.data_ptr<int32_t>(),
                     ptr<float>(out), seqlens.batch, seq_len, packed.size(1));
  return out;
}

}  // namespace
}  // namespace pybert::ops_cpu

TORCH_LIBRARY_IMPL(pybert, CPU, m) { PYBERT_IMPL_OPS(m, pybert::ops_cpu) }
