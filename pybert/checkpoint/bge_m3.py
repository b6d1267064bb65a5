"""BGE-M3's two heads beside its encoder (BAAI/bge-m3, FlagEmbedding's layout): in the model's
folder, ``sparse_linear.pt`` (a Linear(H, 1): each token's lexical weight is the ReLU of it)
and ``colbert_linear.pt`` (a Linear(H, D): the multi-vector head, on every token but the first).
Both exist only as PyTorch files, so they are read with torch's tensors-only loader
(``weights_only=True``: tensors and plain containers, never code), size-capped, and must hold
exactly a weight and a bias of the shapes the encoder's width allows, finite."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from .contents import LinearLayer
from .files import CheckpointError, read_file

__all__ = ["LEXICAL_HEAD_FILE", "MULTI_VECTOR_HEAD_FILE", "read_bge_m3_heads"]

LEXICAL_HEAD_FILE = "sparse_linear.pt"
MULTI_VECTOR_HEAD_FILE = "colbert_linear.pt"
# BGE-M3's colbert_linear is 1024 x 1024 floats (4 MB); a head many times wider is refused.
MAX_HEAD_BYTES = 64 << 20
# torch's tensors-only loader refuses code from 2.6 on (older ones had a way around it).
_SAFE_TORCH = (2, 6)


def _read_linear(path: Path, width: int, outputs: int | None) -> LinearLayer:
    """The Linear(width, outputs) of a PyTorch file holding its state dict (any outputs when
    ``outputs`` is None)."""
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if version < _SAFE_TORCH:
        raise CheckpointError(f"{path}: reading a PyTorch file safely needs torch >= 2.6 "
                              f"(this is {torch.__version__})")
    data = read_file(path, MAX_HEAD_BYTES, "a head's weights")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (any refusal of the loader: a bad or hostile file)
        raise CheckpointError(f"{path}: not a PyTorch file of tensors: {str(err)[:300]}") \
            from None
    if not isinstance(state, dict) or set(state) != {"weight", "bias"} or not all(
            isinstance(t, torch.Tensor) and t.dtype in (torch.float32, torch.float16,
                                                        torch.bfloat16, torch.float64)
            for t in state.values()):
        keys = sorted(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: must hold a Linear layer's floating-point weight and "
                              f"bias, got {keys}")
    weight, bias = state["weight"], state["bias"]
    rows = weight.shape[0] if weight.dim() == 2 else -1
    if weight.dim() != 2 or weight.shape[1] != width or (outputs is not None and
                                                         rows != outputs) \
            or tuple(bias.shape) != (rows,) or rows < 1:
        want = f"({outputs if outputs is not None else 'D'}, {width})"
        raise CheckpointError(f"{path}: the weight must be {want} and the bias its rows, got "
                              f"{tuple(weight.shape)} and {tuple(bias.shape)}")
    if not (bool(torch.isfinite(weight).all()) and bool(torch.isfinite(bias).all())):
        raise CheckpointError(f"{path}: the head holds NaN or infinity")
    return LinearLayer(weight.float(), bias.float())


def read_bge_m3_heads(folder: Path, width: int) -> tuple[LinearLayer | None,
                                                         LinearLayer | None]:
    """(lexical head, multi-vector head) of a BGE-M3 folder, each None where its file is
    absent; ``width`` is the encoder's hidden size."""
    folder = Path(folder)
    lexical = folder / LEXICAL_HEAD_FILE
    multi = folder / MULTI_VECTOR_HEAD_FILE
    return (_read_linear(lexical, width, 1) if lexical.exists() else None,
            _read_linear(multi, width, None) if multi.exists() else None)
