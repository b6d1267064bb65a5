// The schemas of torch.ops.pybert.*, declared once; each device registers its implementations
// in its own file (ops_cpu.cpp, ops_cuda.cpp) and pybert/ops.py registers the fake ones.
// activation is a code of kernels/activation.h: 0 none, 1 relu, 2 tanh, 3 gelu, 4 silu.
#include <torch/library.h>

TORCH_LIBRARY(pybert, m) {
  m.def("gemm_bias_act(Tensor a, Tensor weight, Tensor? bias, int activation) -> Tensor");
  m.def("embed_packed(Tensor tokens, Tensor segments, Tensor cu_seqlens, int total_tokens, "
        "Tensor token_table, Tensor segment_table, Tensor pos_table) -> Tensor");
  m.def("add_layernorm(Tensor x, Tensor? residual, Tensor weight, Tensor? bias, float eps) "
        "-> Tensor");
  // A pre-norm residual step: (x + delta, LayerNorm(x + delta)), the inputs left as they are.
  m.def("add_residual_layernorm(Tensor delta, Tensor x, Tensor weight, Tensor? bias, "
        "float eps) -> (Tensor, Tensor)");
  // kernel (tests, benchmarks): "torch", the library kernel the engine calls by default
  // (flash attention on the CPU; on the GPU FlashAttention-2 or the memory-efficient kernel
  // where they take the shape); "own", pybert's own (kernels/cpu's tiled kernel, kernels/cuda's
  // attention); on the CPU also "mkl", MKL's batched sgemm. The CPU's own and mkl kernels are
  // float's, for sequences of up to 512 tokens; bfloat16 and longer sequences take flash.
  // window > 0: keys with |i - j| <= window only (a sliding window).
  m.def("attention_varlen(Tensor qkv, Tensor cu_seqlens, int max_seqlen, int num_heads, "
        "str kernel=\"torch\", int window=0) -> Tensor");
  // Rotary positions on the Q and K thirds of packed QKV rows (a rotated copy); cos and sin
  // are (positions, head_dim / 2).
  m.def("rotary_qk(Tensor qkv, Tensor cu_seqlens, int num_heads, Tensor cos, Tensor sin) "
        "-> Tensor");
  // act(x[:, :F]) * x[:, F:] of x (rows, 2F): a gated FFN's middle.
  m.def("gated_activation(Tensor x, int activation) -> Tensor");
  m.def("gather_rows(Tensor packed, Tensor cu_seqlens, Tensor? positions) -> Tensor");
  m.def("unpack_padded(Tensor packed, Tensor cu_seqlens, int seq_len) -> Tensor");
}
