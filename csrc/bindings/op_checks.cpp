#include "op_checks.h"

#include <cmath>

namespace pybert {

GemmArgs check_gemm_bias_act(const at::Tensor& a, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, int64_t activation) {
  const auto device = a.device();
  check_tensor(a, "a", a.scalar_type(), 2, device);
  check_tensor(weight, "weight", a.scalar_type(), 2, device);
  TORCH_CHECK(a.size(1) == weight.size(1), "a (", a.sizes(), ") and weight (", weight.sizes(),
              ") disagree on the inner dimension");
  TORCH_CHECK(a.size(1) >= 1, "the inner dimension must be >= 1, got shape ", a.sizes());
  if (bias.has_value()) {
    check_tensor(*bias, "bias", a.scalar_type(), 1, device);
    TORCH_CHECK(bias->size(0) == weight.size(0), "bias must have ", weight.size(0),
                " entries, got ", bias->size(0));
  }
  return {a.size(0), weight.size(0), a.size(1), activation_from_code(activation)};
}

EmbedArgs check_embed_packed(const at::Tensor& tokens, const at::Tensor& segments,
                             const at::Tensor& cu_seqlens, int64_t total_tokens,
                             const at::Tensor& token_table, const at::Tensor& segment_table,
                             const at::Tensor& pos_table) {
  const auto device = token_table.device();
  const auto dtype = token_table.scalar_type();
  check_tensor(tokens, "tokens", at::kLong, 2, device);
  check_tensor(segments, "segments", at::kLong, 2, device);
  check_tensor(cu_seqlens, "cu_seqlens", at::kInt, 1, device);
  check_tensor(token_table, "token_table", dtype, 2, device);
  check_tensor(segment_table, "segment_table", dtype, 2, device);
  check_tensor(pos_table, "pos_table", dtype, 2, device);
  EmbedArgs args;
  args.batch = tokens.size(0);
  args.seq_len = tokens.size(1);
  args.hidden = token_table.size(1);
  args.total_tokens = total_tokens;
  TORCH_CHECK(segments.sizes() == tokens.sizes(), "segments must have the shape of tokens ",
              tokens.sizes(), ", got ", segments.sizes());
  TORCH_CHECK(args.batch >= 1 && args.seq_len >= 1, "tokens must be non-empty, got shape ",
              tokens.sizes());
  TORCH_CHECK(segment_table.size(1) == args.hidden && pos_table.size(1) == args.hidden,
              "segment_table ", segment_table.sizes(), " and pos_table ", pos_table.sizes(),
              " must have the width of token_table, ", args.hidden);
  TORCH_CHECK(pos_table.size(0) >= args.seq_len, "pos_table has ", pos_table.size(0),
              " rows, fewer than seq_len ", args.seq_len);
  TORCH_CHECK(cu_seqlens.size(0) == args.batch + 1, "cu_seqlens must have batch + 1 = ",
              args.batch + 1, " entries, got ", cu_seqlens.size(0));
  args.seqlens = checked_seqlens(cu_seqlens, total_tokens);
  TORCH_CHECK(args.seqlens.longest <= args.seq_len, "a sequence of cu_seqlens has length ",
              args.seqlens.longest, ", longer than seq_len ", args.seq_len);
  args.tokens = checked_ids(tokens, token_table.size(0), "tokens");
  args.segments = checked_ids(segments, segment_table.size(0), "segments");
  return args;
}

AttentionArgs check_rotary_qk(const at::Tensor& qkv, const at::Tensor& cu_seqlens,
                              int64_t num_heads, const at::Tensor& cos, const at::Tensor& sin) {
  check_tensor(qkv, "qkv", qkv.scalar_type(), 2, qkv.device());
  check_tensor(cos, "cos", qkv.scalar_type(), 2, qkv.device());
  check_tensor(sin, "sin", qkv.scalar_type(), 2, qkv.device());
  check_tensor(cu_seqlens, "cu_seqlens", at::kInt, 1, qkv.device());
  TORCH_CHECK(num_heads >= 1 && qkv.size(1) % (6 * num_heads) == 0 && qkv.size(1) > 0,
              "qkv width ", qkv.size(1), " must be 3 * num_heads * head_dim with an even "
              "head_dim, num_heads = ", num_heads);
  AttentionArgs args;
  args.head_dim = qkv.size(1) / (3 * num_heads);
  args.seqlens = checked_seqlens(cu_seqlens, qkv.size(0));
  args.batch = args.seqlens.batch;
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.size(1) == args.head_dim / 2 &&
                  cos.size(0) >= args.seqlens.longest,
              "cos and sin must be (>= the longest sequence, head_dim / 2) = (>= ",
              args.seqlens.longest, ", ", args.head_dim / 2, "), got ", cos.sizes(), " and ",
              sin.sizes());
  return args;
}

Activation check_gated_activation(const at::Tensor& x, int64_t activation) {
  check_tensor(x, "x", x.scalar_type(), 2, x.device());
  TORCH_CHECK(x.size(1) % 2 == 0, "x must have an even width ([a | g]), got ", x.size(1));
  return activation_from_code(activation);
}

void check_add_layernorm(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                         const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         double eps) {
  const auto device = x.device();
  const auto dtype = x.scalar_type();
  check_tensor(x, "x", dtype, 2, device);
  check_tensor(weight, "weight", dtype, 1, device);
  if (bias.has_value()) check_tensor(*bias, "bias", dtype, 1, device);
  TORCH_CHECK(x.size(1) >= 1, "x must have rows of at least one value, got shape ", x.sizes());
  TORCH_CHECK(weight.size(0) == x.size(1) && (!bias.has_value() || bias->size(0) == x.size(1)),
              "weight and bias must have ", x.size(1), " entries, got ", weight.size(0),
              " and ", bias.has_value() ? bias->size(0) : 0);
  TORCH_CHECK(std::isfinite(eps) && eps >= 0.0, "eps must be finite and >= 0, got ", eps);
  if (residual.has_value()) {
    check_tensor(*residual, "residual", dtype, 2, device);
    TORCH_CHECK(residual->sizes() == x.sizes(), "residual must have the shape of x ",
                x.sizes(), ", got ", residual->sizes());
  }
}

AttentionArgs check_attention_varlen(const at::Tensor& qkv, const at::Tensor& cu_seqlens,
                                     int64_t max_seqlen, int64_t num_heads, int64_t window) {
  check_tensor(qkv, "qkv", qkv.scalar_type(), 2, qkv.device());
  check_tensor(cu_seqlens, "cu_seqlens", at::kInt, 1, qkv.device());
  TORCH_CHECK(window >= 0, "window must be >= 0 (0: none), got ", window);
  TORCH_CHECK(num_heads >= 1 && qkv.size(1) >= 3 * num_heads &&
                  qkv.size(1) % (3 * num_heads) == 0,
              "qkv width ", qkv.size(1), " must be 3 * num_heads * head_dim with num_heads = ",
              num_heads);
  AttentionArgs args;
  args.seqlens = checked_seqlens(cu_seqlens, qkv.size(0));
  args.batch = args.seqlens.batch;
  args.head_dim = qkv.size(1) / (3 * num_heads);
  TORCH_CHECK(args.seqlens.total_tokens >= 1, "cu_seqlens holds no tokens");
  // The CPU kernel's scratch is max_seqlen^2 per thread: bounded by the tokens there are.
  TORCH_CHECK(max_seqlen >= args.seqlens.longest && max_seqlen <= args.seqlens.total_tokens,
              "max_seqlen ", max_seqlen, " must be in [", args.seqlens.longest,
              " (the longest sequence), ", args.seqlens.total_tokens, " (the tokens)]");
  return args;
}

GatherArgs check_gather_rows(const at::Tensor& packed, const at::Tensor& cu_seqlens,
                             const std::optional<at::Tensor>& positions) {
  check_tensor(packed, "packed", packed.scalar_type(), 2, packed.device());
  check_tensor(cu_seqlens, "cu_seqlens", at::kInt, 1, packed.device());
  GatherArgs args;
  args.seqlens = checked_seqlens(cu_seqlens, packed.size(0));
  args.batch = args.seqlens.batch;
  args.num_positions = 1;
  if (!positions.has_value()) {
    TORCH_CHECK(args.seqlens.shortest >= 1, "every sequence needs a first token to gather, "
                "but cu_seqlens has an empty one");
    return args;
  }
  check_tensor(*positions, "positions", at::kLong, 2, packed.device());
  TORCH_CHECK(positions->size(0) == args.batch, "positions must have ", args.batch,
              " rows, got ", positions->size(0));
  args.num_positions = positions->size(1);
  args.positions = positions->to(at::kCPU, /*non_blocking=*/false, /*copy=*/true);
  const int64_t* p = args.positions->data_ptr<int64_t>();
  for (int64_t b = 0; b < args.batch; ++b) {
    for (int64_t j = 0; j < args.num_positions; ++j) {
      const int64_t position = p[b * args.num_positions + j];
      TORCH_CHECK(position >= 0 && position < args.seqlens.length(b), "positions[", b, ", ", j,
                  "] = ", position, " is outside sequence ", b, " (length ",
                  args.seqlens.length(b), ")");
    }
  }
  return args;
}

HostSeqlens check_unpack_padded(const at::Tensor& packed, const at::Tensor& cu_seqlens,
                                int64_t seq_len) {
  check_tensor(packed, "packed", packed.scalar_type(), 2, packed.device());
  check_tensor(cu_seqlens, "cu_seqlens", at::kInt, 1, packed.device());
  HostSeqlens seqlens = checked_seqlens(cu_seqlens, packed.size(0));
  TORCH_CHECK(seq_len >= 1 && seq_len >= seqlens.longest, "seq_len ", seq_len,
              " must be >= 1 and >= the longest sequence, ", seqlens.longest);
  return seqlens;
}

}  // namespace pybert
