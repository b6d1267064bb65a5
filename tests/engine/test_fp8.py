"""The FP8 (e4m3) quantisation arithmetic of pybert.engine.fp8, emulated on the CPU: rounding
against an independent float64 rounding, the per-row scales, and the scaled GEMM against
float64, on fresh random inputs of odd sizes."""

import math

import pytest
import torch

from helpers import BOUNDS, rel_l2
from pybert.config import BertConfig
from pybert.engine import Engine
from pybert.engine.fp8 import E4M3_MAX, dequantize_rows, e4m3_round, fp8_linear, quantize_rows

# Rounding to 3 mantissa bits moves a normal value by at most half a step, 2^-4 of its size,
# and by a uniform fraction of that on random data: an rms relative error of at most
# 2^-4 / sqrt(3) per quantised operand, two operands per product.
E4M3_HALF_STEP = 2.0 ** -4
FP8_GEMM_BOUND = math.sqrt(2) * E4M3_HALF_STEP / math.sqrt(3)


def reference_e4m3(values: torch.Tensor) -> torch.Tensor:
    """The nearest e4m3 value of each float64 (ties to even), saturated at +-448: a step of
    2^(e - 3) for a value in [2^e, 2^(e+1)), e >= -6; subnormals in steps of 2^-9."""
    v = values.double()
    exponent = torch.floor(torch.log2(v.abs().clamp_min(2.0 ** -6)))
    step = torch.pow(2.0, exponent - 3)
    return (torch.round(v / step) * step).clamp(-E4M3_MAX, E4M3_MAX)


def test_e4m3_rounding_equals_the_float64_rounding():
    g = torch.Generator().manual_seed(1)
    magnitudes = torch.pow(2.0, torch.empty(20000).uniform_(-12, 10, generator=g))
    values = magnitudes * torch.where(torch.rand(20000, generator=g) < 0.5, -1.0, 1.0)
    ties = torch.tensor([1.0625, 1.1875, -2.125, 2.0 ** -10, 3 * 2.0 ** -10, 464.0, 1e6,
                         -1e30])
    values = torch.cat([values, ties])
    got = e4m3_round(values).double()
    assert torch.equal(got, reference_e4m3(values.float()))
    assert float(e4m3_round(torch.tensor([1e6]))[0].float()) == E4M3_MAX  # saturates, no NaN
    assert bool(torch.isnan(e4m3_round(torch.tensor([float("nan")])).float()).all())


@pytest.mark.parametrize("rows, cols", [(1, 8), (7, 32), (33, 96), (5, 192)])
def test_rows_are_scaled_to_the_largest_e4m3_value(rows, cols):
    g = torch.Generator().manual_seed(rows * cols)
    matrix = torch.randn(rows, cols, generator=g) * torch.pow(
        10.0, torch.empty(rows, 1).uniform_(-3, 3, generator=g))
    q, scale = quantize_rows(matrix)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((rows,), E4M3_MAX))
    error = (dequantize_rows(q, scale) - matrix).abs()
    # Each value within half a step of its own binade (or of the smallest normal's).
    binade = torch.pow(2.0, torch.floor(torch.log2((matrix.abs() / scale[:, None])
                                                   .clamp_min(2.0 ** -6))))
    assert bool((error <= 2.0 ** -3 * binade * scale[:, None] / 2 * (1 + 1e-6)).all())


def test_a_zero_row_and_non_finite_values():
    q, scale = quantize_rows(torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]]))
    assert torch.equal(q[0].float(), torch.zeros(3)) and float(scale[0]) == 1.0
    assert float(q[1, 1].float()) == -E4M3_MAX
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="not finite"):
            quantize_rows(torch.tensor([[1.0, bad]]))
    with pytest.raises(ValueError, match="2-D"):
        quantize_rows(torch.ones(3))
    with pytest.raises(TypeError, match="floating-point"):
        quantize_rows(torch.ones(2, 2, dtype=torch.int32))


@pytest.mark.parametrize("rows, in_features, out_features", [(1, 8, 8), (3, 32, 96),
                                                             (64, 96, 384), (17, 192, 64)])
def test_the_fp8_gemm_against_float64(rows, in_features, out_features):
    g = torch.Generator().manual_seed(rows + in_features)
    x = torch.randn(rows, in_features, generator=g) * 3
    weight = torch.randn(out_features, in_features, generator=g) * 0.05
    bias = torch.randn(out_features, generator=g)
    weight_q, weight_scale = quantize_rows(weight)
    y = fp8_linear(x, weight_q, weight_scale, bias)
    # The emulation's own arithmetic: the quantised operands' exact product, float32 rounding.
    x_q, x_scale = quantize_rows(x)
    exact = (dequantize_rows(x_q, x_scale).double() @
             dequantize_rows(weight_q, weight_scale).double().t()) + bias.double()
    assert rel_l2(y, exact) <= BOUNDS[torch.float32]
    # What quantisation costs against the unquantised product (bias left out: it would hide it).
    unquantized = x.double() @ weight.double().t()
    assert rel_l2(fp8_linear(x, weight_q, weight_scale), unquantized) <= FP8_GEMM_BOUND


def test_the_engine_refuses_fp8_with_the_reason():
    config = BertConfig(vocab_size=32, num_hiddens=16, ffn_num_hiddens=32, num_heads=2,
                        num_layers=1, max_len=8)
    net = config.build_model().eval()
    with pytest.raises(ValueError, match="fp8.*not run on a GPU"):
        Engine.from_model(net, device="cpu", quantize="fp8")
