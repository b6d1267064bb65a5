"""torch.ops.pybert.*: each kernel as a torch op (schemas in csrc/bindings/ops_schema.cpp), and
here their fake (meta) implementations, so torch.compile and torch.library.opcheck can trace
through the kernels without running them.

``ACTIVATIONS`` names the activation codes gemm_bias_act takes:
``torch.ops.pybert.gemm_bias_act(a, weight, bias, ACTIVATIONS["relu"])``.
"""

import torch

from .. import _C

__all__ = ["ACTIVATIONS"]

ACTIVATIONS: dict = dict(_C.ACTIVATIONS)  # {"none": 0, "relu": 1, "tanh": 2, "gelu": 3, "silu": 4}


@torch.library.register_fake("pybert::gemm_bias_act")
def _(a, weight, bias, activation):
    return a.new_empty((a.shape[0], weight.shape[0]))


@torch.library.register_fake("pybert::embed_packed")
def _(tokens, segments, cu_seqlens, total_tokens, token_table, segment_table, pos_table):
    return token_table.new_empty((total_tokens, token_table.shape[1]))


@torch.library.register_fake("pybert::add_layernorm")
def _(x, residual, weight, bias, eps):
    return torch.empty_like(x)


@torch.library.register_fake("pybert::add_residual_layernorm")
def _(delta, x, weight, bias, eps):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.register_fake("pybert::attention_varlen")
def _(qkv, cu_seqlens, max_seqlen, num_heads, kernel="torch", window=0):
    return qkv.new_empty((qkv.shape[0], qkv.shape[1] // 3))


@torch.library.register_fake("pybert::rotary_qk")
def _(qkv, cu_seqlens, num_heads, cos, sin):
    return torch.empty_like(qkv)


@torch.library.register_fake("pybert::gated_activation")
def _(x, activation):
    return x.new_empty((x.shape[0], x.shape[1] // 2))


@torch.library.register_fake("pybert::gather_rows")
def _(packed, cu_seqlens, positions):
    rows = (cu_seqlens.shape[0] - 1) * (1 if positions is None else positions.shape[1])
    return packed.new_empty((rows, packed.shape[1]))


@torch.library.register_fake("pybert::unpack_padded")
def _(packed, cu_seqlens, seq_len):
    return packed.new_empty((cu_seqlens.shape[0] - 1, seq_len, packed.shape[1]))
