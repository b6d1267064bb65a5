"""Each kernel (torch.ops.pybert.*) against a float64 torch reference, on random inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

import pybert  # noqa: F401  (registers the ops)

from conftest import rel_l2

ops = torch.ops.pybert
FP32_BOUND = 1e-5
ACTIVATIONS = {0: lambda x: x, 1: torch.relu, 2: torch.tanh, 3: F.gelu}


def random_cu_seqlens(batch, max_len, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (batch,), generator=g)
    lengths[0] = max_len
    cu = torch.zeros(batch + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    return cu, lengths


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 13, 96), (64, 384, 128), (3, 10000, 32)])
@pytest.mark.parametrize("activation", [0, 1, 2, 3])
def test_gemm_bias_act(m, n, k, activation):
    a, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    out = ops.gemm_bias_act(a, w, b, activation)
    ref = ACTIVATIONS[activation](a.double() @ w.double().T + b.double())
    assert rel_l2(out, ref) <= FP32_BOUND
    no_bias = ops.gemm_bias_act(a, w, None, activation)
    assert rel_l2(no_bias, ACTIVATIONS[activation](a.double() @ w.double().T)) <= FP32_BOUND


@pytest.mark.parametrize("hidden", [8, 96, 768])
@pytest.mark.parametrize("with_residual", [True, False])
def test_add_layernorm(hidden, with_residual):
    x = torch.randn(37, hidden) * 3 + 5  # a large mean tests the variance's cancellation
    residual = torch.randn(37, hidden) if with_residual else None
    weight, bias = 1 + 0.1 * torch.randn(hidden), torch.randn(hidden)
    out = ops.add_layernorm(x, residual, weight, bias, 1e-5)
    total = x.double() + (residual.double() if with_residual else 0)
    ref = F.layer_norm(total, (hidden,), weight.double(), bias.double(), 1e-5)
    assert rel_l2(out, ref) <= FP32_BOUND


def reference_attention(qkv, lengths, num_heads):
    hidden = qkv.shape[1] // 3
    d = hidden // num_heads
    outs, start = [], 0
    for n in lengths.tolist():
        q, k, v = qkv[start:start + n].double().split(hidden, dim=1)
        q, k, v = (t.reshape(n, num_heads, d).transpose(0, 1) for t in (q, k, v))
        p = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)
        outs.append((p @ v).transpose(0, 1).reshape(n, hidden))
        start += n
    return torch.cat(outs)


@pytest.mark.parametrize("num_heads,head_dim", [(4, 8), (3, 32), (2, 64), (4, 192), (1, 20)])
@pytest.mark.parametrize("max_len", [1, 17, 128])
def test_attention_varlen(num_heads, head_dim, max_len):
    cu, lengths = random_cu_seqlens(5, max_len, seed=max_len + head_dim)
    qkv = torch.randn(int(cu[-1]), 3 * num_heads * head_dim)
    out = ops.attention_varlen(qkv, cu, max_len, num_heads)
    assert rel_l2(out, reference_attention(qkv, lengths, num_heads)) <= FP32_BOUND


def test_embed_packed():
    batch, seq_len, hidden, vocab = 4, 9, 24, 31
    cu, lengths = random_cu_seqlens(batch, seq_len, seed=1)
    tokens = torch.randint(0, vocab, (batch, seq_len))
    segments = torch.randint(0, 2, (batch, seq_len))
    tok, seg, pos = torch.randn(vocab, hidden), torch.randn(2, hidden), torch.randn(20, hidden)
    out = ops.embed_packed(tokens, segments, cu, int(cu[-1]), tok, seg, pos)
    full = tok.double()[tokens] + seg.double()[segments] + pos.double()[:seq_len]
    mask = torch.arange(seq_len)[None, :] < lengths[:, None]
    assert rel_l2(out, full[mask]) <= FP32_BOUND


def test_gather_and_unpack():
    batch, seq_len, hidden = 5, 11, 16
    cu, lengths = random_cu_seqlens(batch, seq_len, seed=2)
    packed = torch.randn(int(cu[-1]), hidden)
    padded = ops.unpack_padded(packed, cu, seq_len)
    mask = torch.arange(seq_len)[None, :] < lengths[:, None]
    assert torch.equal(padded[mask], packed)
    assert torch.count_nonzero(padded[~mask]) == 0
    positions = (torch.rand(batch, 3) * lengths[:, None]).long()
    gathered = ops.gather_rows(packed, cu, positions)
    rows = torch.arange(batch).repeat_interleave(3)
    assert torch.equal(gathered, padded[rows, positions.reshape(-1)])
    assert torch.equal(ops.gather_rows(packed, cu, None), padded[:, 0])


def test_kernels_reject_bad_arguments():
    cu = torch.tensor([0, 3, 5], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="inner dimension"):
        ops.gemm_bias_act(torch.randn(2, 3), torch.randn(4, 5), None, 0)
    with pytest.raises(RuntimeError, match="must be Float"):
        ops.gemm_bias_act(torch.randn(2, 3).double(), torch.randn(4, 3), None, 0)
    with pytest.raises(RuntimeError, match="cu_seqlens"):
        ops.attention_varlen(torch.randn(5, 12), cu.long(), 3, 2)
    with pytest.raises(RuntimeError, match="outside sequence"):
        ops.gather_rows(torch.randn(5, 4), cu, torch.tensor([[0], [2]]))
    with pytest.raises(RuntimeError, match="tokens out of range"):
        ops.embed_packed(torch.tensor([[0, 9]]), torch.zeros(1, 2, dtype=torch.long),
                         torch.tensor([0, 2], dtype=torch.int32), 2, torch.randn(5, 4),
                         torch.randn(2, 4), torch.randn(4, 4))


def test_opcheck():
    """The ops' schemas, fake kernels and dispatch agree (what torch.compile relies on)."""
    cu, _ = random_cu_seqlens(3, 6, seed=3)
    t = int(cu[-1])
    cases = [
        (ops.gemm_bias_act, (torch.randn(4, 8), torch.randn(5, 8), torch.randn(5), 1)),
        (ops.add_layernorm, (torch.randn(4, 8), torch.randn(4, 8), torch.randn(8),
                             torch.randn(8), 1e-5)),
        (ops.attention_varlen, (torch.randn(t, 24), cu, 6, 2)),
        (ops.unpack_padded, (torch.randn(t, 8), cu, 6)),
        (ops.gather_rows, (torch.randn(t, 8), cu, None)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
