"""FP8 (e4m3) quantisation: the arithmetic the CUDA FP8 path is to compute, written in torch
so that it runs, and is tested, on any CPU.

The scheme (issue 34, for sm_89/sm_90 with cuBLASLt FP8 GEMMs):
- weights (out_features, in_features) in e4m3 with one float32 scale per output channel
  (row), chosen so that the row's largest magnitude lands on e4m3's largest finite value, 448;
- activations (rows, in_features) in e4m3 with one float32 scale per row (token), computed
  by the op that produces them (LayerNorm, GELU) from the row it already holds;
- the GEMM accumulates the e4m3 products exactly in float32 and applies the two scales as an
  outer product in its epilogue: y[i, j] = sx[i] * sw[j] * sum_k xq[i, k] * wq[j, k] + b[j].

Nothing here runs on the CUDA engine yet: ``quantize="fp8"`` is refused until its kernels
have run on a GPU. These functions are the reference those kernels will be tested against,
and what ``benchmarks/fp8_accuracy.py`` uses to measure what the scheme costs a real model.
"""

from __future__ import annotations

import torch

__all__ = ["E4M3_MAX", "quantize_rows", "dequantize_rows", "fp8_linear", "e4m3_round"]

# e4m3 (the "fn" variant: no infinities, one NaN pattern): 4 exponent bits, 3 mantissa bits,
# largest finite 448, smallest normal 2^-6, smallest subnormal 2^-9.
E4M3_MAX = 448.0
E4M3 = torch.float8_e4m3fn


def e4m3_round(values: torch.Tensor) -> torch.Tensor:
    """``values`` rounded to the nearest e4m3 number (ties to even), saturating at +-448
    instead of becoming NaN, returned as e4m3. NaN stays NaN."""
    return values.float().clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


def quantize_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) with q (rows, cols) e4m3 and scale (rows,) float32 such that
    q[i] * scale[i] approximates matrix[i]: scale[i] = max|matrix[i]| / 448. An all-zero row
    gets scale 1 (its q is zeros), so dequantising never divides by zero. A non-finite value
    raises: there is no scale for it."""
    if matrix.dim() != 2:
        raise ValueError(f"quantize_rows takes a 2-D matrix, got shape {tuple(matrix.shape)}")
    if not matrix.is_floating_point():
        raise TypeError(f"quantize_rows takes a floating-point matrix, got {matrix.dtype}")
    matrix = matrix.float()
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError("a value to quantise to fp8 is not finite")
    amax = matrix.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    return e4m3_round(matrix / scale[:, None]), scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 q * scale, row by row (the inverse of quantize_rows, up to its rounding)."""
    return q.float() * scale[:, None]


def fp8_linear(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """y (rows, out) = x @ W^T + bias with x quantised per row to e4m3 here and W given as
    quantize_rows(W): the products of e4m3 values summed in float32, the two scales applied
    to the sum (as cuBLASLt's outer-vector scaling does), then the bias. x (rows, in)."""
    x_q, x_scale = quantize_rows(x)
    y = (x_q.float() @ weight_q.float().t()) * x_scale[:, None] * weight_scale[None, :]
    return y if bias is None else y + bias.float()
