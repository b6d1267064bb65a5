"""Each kernel (torch.ops.pybert.*) against a float64 torch reference, on fresh random inputs:
the CPU kernels in fp32 and bf16, and (marked cuda, skipped without a GPU) the CUDA kernels
in fp32, fp16 and bf16."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import pybert  # noqa: F401  (registers the ops)
from pybert import _C

from pybert.engine.ops import ACTIVATIONS

from helpers import BOUNDS, rel_l2

ops = torch.ops.pybert
REFERENCE_ACTIVATIONS = {"none": lambda x: x, "relu": torch.relu, "tanh": torch.tanh,
                         "gelu": F.gelu, "silu": F.silu}

TARGETS = [
    pytest.param(("cpu", torch.float32), id="cpu-fp32"),
    pytest.param(("cpu", torch.bfloat16), id="cpu-bf16"),
    pytest.param(("cuda", torch.float32), id="cuda-fp32", marks=pytest.mark.cuda),
    pytest.param(("cuda", torch.float16), id="cuda-fp16", marks=pytest.mark.cuda),
    pytest.param(("cuda", torch.bfloat16), id="cuda-bf16", marks=pytest.mark.cuda),
]


@pytest.fixture(params=TARGETS)
def target(request):
    return request.param


# The attention's kernels: "torch" (flash attention on the CPU; FlashAttention-2 or the
# memory-efficient kernel on the GPU), "own" (kernels/cpu's tiled kernel, kernels/cuda's
# attention) and, on the CPU where torch has MKL, "mkl" (its batched sgemm). The CPU's own and
# mkl kernels are float's: in bf16 they hand every sequence to flash.
ATTENTION_KERNELS = ["torch", "own", "mkl"]
MKL_ATTENTION = _C.cpu_attention_path_available(_C.CPU_ATTENTION_PATHS["mkl"])


@pytest.fixture(params=ATTENTION_KERNELS)
def attention_kernel(request, target):
    if request.param == "mkl" and (target[0] != "cpu" or not MKL_ATTENTION):
        pytest.skip("MKL's attention: CPU only, where torch has MKL")
    return request.param


def rand(*shape, target, scale=1.0, shift=0.0):
    device, dtype = target
    return (torch.randn(*shape, dtype=torch.float64) * scale + shift).to(device, dtype)


def cu_seqlens_of(lengths, device="cpu"):
    """The prefix sums of `lengths`, int32 (cu_seqlens[b]: sequence b's first packed row)."""
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    return cu.to(device)


def random_cu_seqlens(batch, max_len, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (batch,), generator=g)
    lengths[0] = max_len
    return cu_seqlens_of(lengths, device), lengths


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 13, 96), (64, 384, 128), (3, 10000, 32)])
@pytest.mark.parametrize("activation", ["none", "relu", "tanh", "gelu"])
def test_gemm_bias_act(target, m, n, k, activation):
    a, w, b = rand(m, k, target=target), rand(n, k, target=target), rand(n, target=target)
    out = ops.gemm_bias_act(a, w, b, ACTIVATIONS[activation])
    assert out.dtype == a.dtype and out.device == a.device
    ref = REFERENCE_ACTIVATIONS[activation](a.double() @ w.double().T + b.double())
    assert rel_l2(out, ref) <= BOUNDS[target[1]]
    no_bias = ops.gemm_bias_act(a, w, None, ACTIVATIONS[activation])
    ref = REFERENCE_ACTIVATIONS[activation](a.double() @ w.double().T)
    assert rel_l2(no_bias, ref) <= BOUNDS[target[1]]


# On the GPU, rows of whole 16-byte packs up to 4 KB take the warp-per-row kernel (8, 96, 768,
# 2048 in fp16/bf16; 20 in fp32), the others the block-per-row one (20 in fp16, 4096).
@pytest.mark.parametrize("hidden", [8, 20, 96, 768, 2048, 4096])
@pytest.mark.parametrize("with_residual", [True, False])
def test_add_layernorm(target, hidden, with_residual):
    # a large mean tests the variance's cancellation
    x = rand(37, hidden, target=target, scale=3.0, shift=5.0)
    residual = rand(37, hidden, target=target) if with_residual else None
    weight = rand(hidden, target=target, scale=0.1, shift=1.0)
    bias = rand(hidden, target=target)
    out = ops.add_layernorm(x, residual, weight, bias, 1e-5)
    total = x.double() + (residual.double() if with_residual else 0)
    ref = F.layer_norm(total, (hidden,), weight.double(), bias.double(), 1e-5)
    assert rel_l2(out, ref) <= BOUNDS[target[1]]


@pytest.mark.parametrize("hidden", [96, 768, 1000])
def test_layernorm_without_bias_and_the_pre_norm_residual(target, hidden):
    """A LayerNorm without bias (ModernBERT's), and the pre-norm step: x + delta kept, then
    its LayerNorm (which reads the sum as stored, rounded to the type)."""
    x = rand(21, hidden, target=target, scale=2.0, shift=1.0)
    delta = rand(21, hidden, target=target)
    weight = rand(hidden, target=target, scale=0.1, shift=1.0)
    out = ops.add_layernorm(x, None, weight, None, 1e-5)
    ref = F.layer_norm(x.double(), (hidden,), weight.double(), None, 1e-5)
    assert rel_l2(out, ref) <= BOUNDS[target[1]]
    for bias in (None, rand(hidden, target=target)):
        total, normed = ops.add_residual_layernorm(delta, x, weight, bias, 1e-5)
        expected = x.double() + delta.double()
        assert rel_l2(total, expected) <= BOUNDS[target[1]]
        ref = F.layer_norm(total.double(), (hidden,), weight.double(),
                           None if bias is None else bias.double(), 1e-5)
        assert rel_l2(normed, ref) <= BOUNDS[target[1]]


def test_add_layernorm_of_unaligned_rows(target):
    """Rows that do not start on a 16-byte boundary (a view one element into its storage) take
    the kernel that needs no alignment, with the same result."""
    hidden = 96
    storage = rand(37 * hidden + 1, target=target, scale=2.0, shift=1.0)
    x = storage[1:].view(37, hidden)
    weight = rand(hidden, target=target, scale=0.1, shift=1.0)
    bias = rand(hidden, target=target)
    out = ops.add_layernorm(x, None, weight, bias, 1e-5)
    ref = F.layer_norm(x.double(), (hidden,), weight.double(), bias.double(), 1e-5)
    assert rel_l2(out, ref) <= BOUNDS[target[1]]


@pytest.mark.parametrize("target", [t for t in TARGETS if t.values[0][0] == "cpu"])
def test_add_layernorm_of_rows_whose_squares_overflow_float(target):
    """Finite values of 1e34 square beyond float's range: such a row must still normalise
    right (found by the checkpoint fuzzer: one damaged weight of 1.7e34), not come out as
    beta."""
    x = rand(5, 96, target=target)
    x[1, 7] = 1e34
    x[3, :10] = -3e37
    weight = rand(96, target=target, scale=0.1, shift=1.0)
    bias = rand(96, target=target)
    out = ops.add_layernorm(x, None, weight, bias, 1e-5)
    ref = F.layer_norm(x.double(), (96,), weight.double(), bias.double(), 1e-5)
    assert bool(torch.isfinite(out).all())
    assert rel_l2(out, ref) <= BOUNDS[target[1]]


def reference_attention(qkv, lengths, num_heads, window=0):
    hidden = qkv.shape[1] // 3
    d = hidden // num_heads
    outs, start = [], 0
    for n in lengths.tolist():
        q, k, v = qkv[start:start + n].double().cpu().split(hidden, dim=1)
        q, k, v = (t.reshape(n, num_heads, d).transpose(0, 1) for t in (q, k, v))
        scores = q @ k.transpose(1, 2) / math.sqrt(d)
        if window:
            distance = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs()
            scores = scores.masked_fill(distance > window, float("-inf"))
        p = torch.softmax(scores, dim=-1)
        outs.append((p @ v).transpose(0, 1).reshape(n, hidden))
        start += n
    return torch.cat(outs)


# head dims: 8, 32, 64 and 192 (the book's example); 40 (a multiple of 8, not of 16) and 256 at
# the edges of FlashAttention-2's and our tensor-core kernel's range; 20 on our CUDA-core
# kernel in fp16/bf16 (the memory-efficient kernel's in fp32). Lengths: 1, 17 and 130 (across
# the CPU kernel's 64-query blocks and its register tiles of 4-8 rows and 16-32 columns).
@pytest.mark.parametrize("num_heads,head_dim", [(4, 8), (3, 32), (2, 64), (4, 192), (2, 40),
                                                (1, 256), (1, 20)])
@pytest.mark.parametrize("max_len", [1, 17, 130])
def test_attention_varlen(target, num_heads, head_dim, max_len, attention_kernel):
    cu, lengths = random_cu_seqlens(5, max_len, seed=max_len + head_dim, device=target[0])
    qkv = rand(int(cu[-1]), 3 * num_heads * head_dim, target=target)
    out = ops.attention_varlen(qkv, cu, max_len, num_heads, kernel=attention_kernel)
    ref = reference_attention(qkv, lengths, num_heads)
    assert rel_l2(out, ref) <= BOUNDS[target[1]]


# A sliding window (ModernBERT's local layers): |i - j| <= window. On the CPU the sequences
# longer than window + 1 go to the banded kernel (blocks of queries against the keys around
# them), the rest to the global ones; on the GPU to FlashAttention-2's window or our CUDA-core
# kernel's (fp32).
@pytest.mark.parametrize("num_heads,head_dim", [(4, 8), (3, 32), (2, 64), (1, 192)])
@pytest.mark.parametrize("window,lengths", [(1, [1, 2, 3, 40]), (4, [5, 6, 77, 1]),
                                            (64, [1, 65, 66, 129, 300, 700]),
                                            (40, [200, 41, 90]),
                                            # masks in chunks
                                            pytest.param(1500, [3000, 1600, 20],
                                                         marks=pytest.mark.slow)])
def test_attention_varlen_in_a_window(target, num_heads, head_dim, window, lengths):
    lengths = torch.tensor(lengths)
    cu = cu_seqlens_of(lengths, target[0])
    torch.manual_seed(window + head_dim)
    qkv = rand(int(cu[-1]), 3 * num_heads * head_dim, target=target)
    out = ops.attention_varlen(qkv, cu, int(lengths.max()), num_heads, window=window)
    ref = reference_attention(qkv, lengths, num_heads, window=window)
    assert rel_l2(out, ref) <= BOUNDS[target[1]]
    assert rel_l2(ref, reference_attention(qkv, lengths, num_heads)) > 1e-2  # it matters


def reference_rotary(qkv, lengths, num_heads, cos, sin):
    """Hugging Face's rotate-half form on Q and K, position s of each sequence, in float64."""
    out = qkv.double().cpu().clone()
    hidden = qkv.shape[1] // 3
    d = hidden // num_heads
    start = 0
    for n in lengths.tolist():
        c = torch.cat([cos[:n], cos[:n]], -1).double().cpu()[:, None]
        s = torch.cat([sin[:n], sin[:n]], -1).double().cpu()[:, None]
        for third in (0, 1):
            x = out[start:start + n, third * hidden:(third + 1) * hidden].reshape(n, num_heads, d)
            rotated = torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1)
            out[start:start + n, third * hidden:(third + 1) * hidden] = \
                (x * c + rotated * s).reshape(n, hidden)
        start += n
    return out


@pytest.mark.parametrize("num_heads,head_dim", [(4, 8), (3, 32), (1, 192), (2, 64)])
def test_rotary_qk(target, num_heads, head_dim):
    lengths = torch.tensor([1, 17, 5, 40])
    cu = cu_seqlens_of(lengths, target[0])
    torch.manual_seed(head_dim)
    qkv = rand(int(cu[-1]), 3 * num_heads * head_dim, target=target)
    angles = torch.arange(50.0)[:, None] * 10000.0 ** (-torch.arange(0, head_dim, 2) / head_dim)
    cos, sin = (f(angles).to(*target) for f in (torch.cos, torch.sin))
    out = ops.rotary_qk(qkv, cu, num_heads, cos, sin)
    assert rel_l2(out, reference_rotary(qkv, lengths, num_heads, cos, sin)) <= BOUNDS[target[1]]
    hidden = num_heads * head_dim
    assert torch.equal(out[:, 2 * hidden:], qkv[:, 2 * hidden:])  # V untouched
    with pytest.raises(RuntimeError, match="cos and sin"):
        ops.rotary_qk(qkv, cu, num_heads, cos[:30], sin[:30])


@pytest.mark.parametrize("activation", ["gelu", "silu", "relu"])
@pytest.mark.parametrize("rows,width", [(1, 1), (7, 96), (33, 1152)])
def test_gated_activation(target, activation, rows, width):
    x = rand(rows, 2 * width, target=target)
    out = ops.gated_activation(x, ACTIVATIONS[activation])
    ref = REFERENCE_ACTIVATIONS[activation](x.double()[:, :width]) * x.double()[:, width:]
    assert rel_l2(out, ref) <= BOUNDS[target[1]]
    with pytest.raises(RuntimeError, match="even width"):
        ops.gated_activation(x[:, :2 * width - 1].contiguous(), ACTIVATIONS[activation])


def test_attention_varlen_groups_sequences_of_one_length(target):
    """Many sequences (the CPU's batched path): those of one length are attended together,
    in place where they are neighbours, gathered and scattered back where they are not."""
    batch = 2 * torch.get_num_threads() + 10
    g = torch.Generator().manual_seed(7)
    lengths = torch.tensor([3, 5, 9, 9, 9, 1])[torch.randint(0, 6, (batch,), generator=g)]
    lengths[4:7] = 9  # a run of neighbours too
    cu = cu_seqlens_of(lengths)
    qkv = rand(int(cu[-1]), 3 * 2 * 16, target=target)
    out = ops.attention_varlen(qkv, cu.to(target[0]), 9, 2)
    assert rel_l2(out, reference_attention(qkv, lengths, 2)) <= BOUNDS[target[1]]


def test_attention_varlen_of_many_short_sequences(target, attention_kernel):
    """The CPU's float kernels: enough sequences that each thread's share takes several
    rounds of MKL's score buffer, three heads so that a thread's share can begin or end inside
    a sequence, lengths from 1 to 120 (score rows of 1 to 8 lanes of 16, whole and partial;
    one or two query blocks of the own kernel), and scores spread wide enough (scale 4) that
    most softmax weights underflow."""
    g = torch.Generator().manual_seed(11)
    lengths = torch.randint(1, 121, (301,), generator=g)
    lengths[:3] = torch.tensor([96, 97, 1])
    cu = cu_seqlens_of(lengths)
    qkv = rand(int(cu[-1]), 3 * 3 * 24, target=target, scale=4.0)
    out = ops.attention_varlen(qkv, cu.to(target[0]), 120, 3, kernel=attention_kernel)
    assert rel_l2(out, reference_attention(qkv, lengths, 3)) <= BOUNDS[target[1]]


def test_attention_varlen_beyond_the_kernels_limit(target, attention_kernel):
    """Sequences longer than 512 tokens (a model with a longer position table) go to flash
    attention beside shorter ones in the CPU's float kernels, in one call (512: the own
    kernel's eight query blocks)."""
    lengths = torch.tensor([600, 3, 513, 512, 40, 300])
    cu = cu_seqlens_of(lengths)
    qkv = rand(int(cu[-1]), 3 * 2 * 16, target=target)
    out = ops.attention_varlen(qkv, cu.to(target[0]), 600, 2, kernel=attention_kernel)
    assert rel_l2(out, reference_attention(qkv, lengths, 2)) <= BOUNDS[target[1]]


def test_attention_varlen_passes_nan_on(target, attention_kernel):
    """A NaN in one sequence's keys makes that sequence's context NaN (for the forward's
    finiteness check to report), not a finite guess, and leaves the others alone."""
    lengths = torch.tensor([5, 7, 6] * 6)
    cu = cu_seqlens_of(lengths)
    qkv = rand(int(cu[-1]), 3 * 2 * 8, target=target)
    qkv[int(cu[1]) + 3, 16 + 2] = float("nan")  # sequence 1, a key of head 0
    out = ops.attention_varlen(qkv, cu.to(target[0]), 7, 2, kernel=attention_kernel).cpu()
    rows_of_1 = slice(int(cu[1]), int(cu[2]))
    assert bool(torch.isnan(out[rows_of_1, :8]).all())
    others = torch.cat([out[: int(cu[1])], out[int(cu[2]):]])
    assert bool(torch.isfinite(others).all())


def test_an_overflowing_score_makes_its_row_nan(target, attention_kernel):
    """q . k beyond float's range (scores of -1e50): the CPU's float kernels make that
    query's context NaN, for the forward's check to report, whichever sign the overflowing sum
    ended with (a fused multiply-add can end at -inf where the true score is positive, and a
    weight of 0 would then be a silent wrong answer); the other queries stay finite."""
    if target != ("cpu", torch.float32) or attention_kernel == "torch":
        pytest.skip("the CPU's own and MKL kernels in float")
    qkv = rand(4, 3 * 2 * 8, target=target)
    qkv[0, :8] = 1e25            # query 0, head 0
    qkv[2, 16:24] = -1e25        # key 2, head 0: q0 . k2 = -8e50
    cu = cu_seqlens_of(torch.tensor([4]))
    out = ops.attention_varlen(qkv, cu, 4, 2, kernel=attention_kernel)
    assert bool(torch.isnan(out[0, :8]).all())
    assert bool(torch.isfinite(out[1:]).all()) and bool(torch.isfinite(out[0, 8:]).all())


ISA_SCRIPT = """
import json, math, sys
import torch
sys.path[:0] = sys.argv[1:3]
from test_kernels import cu_seqlens_of, reference_attention
from helpers import rel_l2
from pybert import _C
errors = []
for heads, d, lengths in [(4, 8, [1, 17, 130]), (3, 32, [64, 65, 5]), (2, 64, [512, 33]),
                          (4, 192, [40, 1, 77]), (1, 20, [9, 100])]:
    torch.manual_seed(d)
    lengths = torch.tensor(lengths)
    cu = cu_seqlens_of(lengths)
    qkv = torch.randn(int(cu[-1]), 3 * heads * d)
    out = torch.ops.pybert.attention_varlen(qkv, cu, int(lengths.max()), heads, kernel="own")
    errors.append(rel_l2(out, reference_attention(qkv, lengths, heads)))
print(json.dumps({"isa": _C.cpu_attention_isa(), "errors": errors}))
"""


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_the_own_attention_kernel_in_each_isa(isa):
    """The own CPU kernel's products are compiled per ISA level and chosen by the CPU when the
    library loads; PYBERT_ATTENTION_ISA caps the choice, so that the variants an AVX2-only or
    older CPU (or NEON, as baseline) would run are tested on this one, in a fresh process."""
    # The subprocess imports the pybert this process imported, wherever that came from.
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(pybert.__file__)))
    env = dict(os.environ, PYBERT_ATTENTION_ISA=isa,
               PYTHONPATH=os.pathsep.join([package_parent, os.environ.get("PYTHONPATH", "")]))
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", ISA_SCRIPT, os.path.join(tests, "kernels"),
                           tests], env=env, capture_output=True, text=True, timeout=300,
                          cwd=os.path.join(tests, "kernels"))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["isa"] in (("avx2", "baseline") if isa == "avx2" else ("baseline",))
    assert max(result["errors"]) <= BOUNDS[torch.float32], result


def test_embed_packed(target):
    device, _ = target
    batch, seq_len, hidden, vocab = 4, 9, 24, 31
    cu, lengths = random_cu_seqlens(batch, seq_len, seed=1, device=device)
    tokens = torch.randint(0, vocab, (batch, seq_len), device=device)
    segments = torch.randint(0, 2, (batch, seq_len), device=device)
    tok, seg = rand(vocab, hidden, target=target), rand(2, hidden, target=target)
    pos = rand(20, hidden, target=target)
    out = ops.embed_packed(tokens, segments, cu, int(cu[-1]), tok, seg, pos)
    full = tok.double()[tokens] + seg.double()[segments] + pos.double()[:seq_len]
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).to(device)
    assert rel_l2(out, full[mask]) <= BOUNDS[target[1]]


def test_gather_and_unpack(target):
    device, _ = target
    batch, seq_len, hidden = 5, 11, 16
    cu, lengths = random_cu_seqlens(batch, seq_len, seed=2, device=device)
    packed = rand(int(cu[-1]), hidden, target=target)
    padded = ops.unpack_padded(packed, cu, seq_len)
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).to(device)
    assert torch.equal(padded[mask], packed)
    assert torch.count_nonzero(padded[~mask]) == 0
    positions = (torch.rand(batch, 3) * lengths[:, None]).long().to(device)
    gathered = ops.gather_rows(packed, cu, positions)
    rows = torch.arange(batch, device=device).repeat_interleave(3)
    assert torch.equal(gathered, padded[rows, positions.reshape(-1)])
    assert torch.equal(ops.gather_rows(packed, cu, None), padded[:, 0])


def test_kernels_reject_bad_arguments():
    cu = torch.tensor([0, 3, 5], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="inner dimension"):
        ops.gemm_bias_act(torch.randn(2, 3), torch.randn(4, 5), None, 0)
    with pytest.raises(RuntimeError, match="weight must be Double, got Float"):
        ops.gemm_bias_act(torch.randn(2, 3).double(), torch.randn(4, 3), None, 0)
    with pytest.raises(RuntimeError, match="compute in float32"):
        ops.add_layernorm(torch.randn(2, 3).double(), None, torch.ones(3).double(),
                          torch.zeros(3).double(), 1e-5)
    with pytest.raises(RuntimeError, match="cu_seqlens"):
        ops.attention_varlen(torch.randn(5, 12), cu.long(), 3, 2)
    with pytest.raises(RuntimeError, match="outside sequence"):
        ops.gather_rows(torch.randn(5, 4), cu, torch.tensor([[0], [2]]))
    with pytest.raises(RuntimeError, match="tokens out of range"):
        ops.embed_packed(torch.tensor([[0, 9]]), torch.zeros(1, 2, dtype=torch.long),
                         torch.tensor([0, 2], dtype=torch.int32), 2, torch.randn(5, 4),
                         torch.randn(2, 4), torch.randn(4, 4))


def opcheck_cases(target):
    """Arguments for every op, on fresh random inputs."""
    device, _ = target
    cu, lengths = random_cu_seqlens(3, 6, seed=3, device=device)
    t = int(cu[-1])
    tokens = torch.randint(0, 11, (3, 6), device=device)
    segments = torch.randint(0, 2, (3, 6), device=device)
    positions = (torch.rand(3, 2) * lengths[:, None]).long().to(device)
    return [
        (ops.gemm_bias_act, (rand(4, 8, target=target), rand(5, 8, target=target),
                             rand(5, target=target), ACTIVATIONS["relu"])),
        (ops.gemm_bias_act, (rand(4, 8, target=target), rand(5, 8, target=target), None,
                             ACTIVATIONS["gelu"])),
        (ops.embed_packed, (tokens, segments, cu, t, rand(11, 8, target=target),
                            rand(2, 8, target=target), rand(6, 8, target=target))),
        (ops.add_layernorm, (rand(4, 8, target=target), rand(4, 8, target=target),
                             rand(8, target=target), rand(8, target=target), 1e-5)),
        (ops.add_layernorm, (rand(4, 8, target=target), None, rand(8, target=target),
                             rand(8, target=target), 1e-5)),
        (ops.attention_varlen, (rand(t, 48, target=target), cu, 6, 2)),
        (ops.attention_varlen, (rand(t, 48, target=target), cu, 6, 2, "own")),
        (ops.unpack_padded, (rand(t, 8, target=target), cu, 6)),
        (ops.gather_rows, (rand(t, 8, target=target), cu, None)),
        (ops.gather_rows, (rand(t, 8, target=target), cu, positions)),
    ]


@pytest.mark.slow
def test_opcheck(target):
    """Every op passes all of torch.library.opcheck's checks: schema, autograd registration,
    fake tensor and AOT dispatch (what torch.compile relies on)."""
    for op, args in opcheck_cases(target):
        torch.library.opcheck(op, args)


def test_torch_compile_traces_the_ops():
    """A function calling the ops compiles into one graph (fullgraph: no break at any op) and
    gives the eager result."""
    torch._dynamo.reset()
    cu, _ = random_cu_seqlens(3, 6, seed=5)
    t = int(cu[-1])
    qkv, w, b = torch.randn(t, 48), torch.randn(16, 16), torch.randn(16)
    gamma, beta = torch.randn(16), torch.randn(16)

    def layer(qkv, cu):
        context = ops.attention_varlen(qkv, cu, 6, 2)
        projected = ops.gemm_bias_act(context, w, b, ACTIVATIONS["none"])
        return ops.add_layernorm(projected, context, gamma, beta, 1e-5)

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(qkv, cu), layer(qkv, cu), rtol=0, atol=0)


@pytest.mark.parametrize("call,match", [
    # an attention kernel that does not exist
    (lambda: ops.attention_varlen(torch.randn(5, 12), torch.tensor([0, 5], dtype=torch.int32),
                                  5, 2, kernel="fortran"),
     "attention kernel must be"),
    # empty or malformed cu_seqlens: refused, never a crash
    (lambda: ops.attention_varlen(torch.randn(0, 12), torch.zeros(0, dtype=torch.int32), 1, 2),
     "cu_seqlens must have batch"),
    (lambda: ops.gather_rows(torch.randn(5, 4), torch.zeros(0, dtype=torch.int32), None),
     "cu_seqlens must have batch"),
    (lambda: ops.gather_rows(torch.randn(5, 4), torch.tensor([0, 5, 5], dtype=torch.int32),
                             None), "empty one"),
    (lambda: ops.unpack_padded(torch.randn(5, 4), torch.tensor([0], dtype=torch.int32), 3),
     "cu_seqlens must have batch"),
    (lambda: ops.attention_varlen(torch.randn(5, 12), torch.tensor([0, 4, 2, 5], dtype=torch.int32),
                                  4, 2), "must not decrease"),
    (lambda: ops.attention_varlen(torch.randn(5, 12), torch.tensor([0, 5], dtype=torch.int32),
                                  10**9, 2), "max_seqlen"),
    (lambda: ops.unpack_padded(torch.randn(5, 4), torch.tensor([0, 5], dtype=torch.int32), 3),
     "longest"),
    # tables narrower or shorter than the token table / the sequence
    (lambda: ops.embed_packed(torch.zeros(1, 2, dtype=torch.long),
                              torch.zeros(1, 2, dtype=torch.long),
                              torch.tensor([0, 2], dtype=torch.int32), 2, torch.randn(5, 8),
                              torch.randn(2, 4), torch.randn(4, 8)), "width of token_table"),
    (lambda: ops.embed_packed(torch.zeros(1, 2, dtype=torch.long),
                              torch.ones(1, 2, dtype=torch.long),
                              torch.tensor([0, 2], dtype=torch.int32), 2, torch.randn(5, 8),
                              torch.randn(1, 8), torch.randn(4, 8)), "segments out of range"),
    (lambda: ops.embed_packed(torch.zeros(1, 2, dtype=torch.long),
                              torch.zeros(1, 2, dtype=torch.long),
                              torch.tensor([0, 2], dtype=torch.int32), 3, torch.randn(5, 8),
                              torch.randn(2, 8), torch.randn(4, 8)), "packed rows"),
    (lambda: ops.gemm_bias_act(torch.randn(2, 3), torch.randn(4, 3), None, 7), "activation"),
    (lambda: ops.add_layernorm(torch.randn(2, 3), None, torch.ones(3), torch.zeros(3),
                               float("nan")), "eps"),
])
def test_ops_check_every_argument(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gemm_plans_serve_every_row_count(dtype):
    """cuBLASLt plans are cached per power-of-two bucket of the row count: every m of a bucket
    must get a correct product from the bucket's algorithm (or its fallback)."""
    target = ("cuda", dtype)
    w, b = rand(384, 128, target=target), rand(384, target=target)
    for m in list(range(1, 70)) + [127, 128, 129, 1000, 1023, 1025, 4097]:
        a = rand(m, 128, target=target)
        out = ops.gemm_bias_act(a, w, b, ACTIVATIONS["relu"])
        ref = torch.relu(a.double() @ w.double().T + b.double())
        assert rel_l2(out, ref) <= BOUNDS[dtype], m


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_gemm_first_used_inside_a_graph_capture(dtype):
    """A GEMM shape first met inside a CUDA graph's capture cannot be timed there: it runs the
    heuristic's first choice (a correct product on replay), and the next call outside the
    capture times the candidates and caches the fastest (also correct)."""
    target = ("cuda", dtype)
    ops.gemm_bias_act(rand(4, 8, target=target), rand(5, 8, target=target), None, 0)  # handle
    n, k = 200 + (dtype == torch.float32), 96  # a shape no other test uses
    a, w, b = rand(37, k, target=target), rand(n, k, target=target), rand(n, target=target)
    ref = a.double() @ w.double().T + b.double()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # captures on a side stream of its own
        captured = ops.gemm_bias_act(a, w, b, ACTIVATIONS["none"])
    captured.fill_(float("nan"))
    graph.replay()
    assert rel_l2(captured, ref) <= BOUNDS[dtype]
    assert rel_l2(ops.gemm_bias_act(a, w, b, ACTIVATIONS["none"]), ref) <= BOUNDS[dtype]
