"""The precisions the engine runs in, as data: its name, the dtype activations are computed in,
how the weights are stored for the backend (the C++ ``weight_storage``), where it runs, and how
it is asked for (a ``dtype``, or ``quantize=``). Every other list of precisions (the engine's
checks, the command line's choices, ``dtype="auto"``) is read off this one. A new precision is
an entry here and its prepare/apply code in the backends (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Precision", "PRECISIONS", "DTYPE_NAMES", "QUANTIZATIONS", "compute_dtypes",
           "quantizations"]


@dataclass(frozen=True)
class Precision:
    name: str
    compute: torch.dtype          # activations, LayerNorm and softmax inputs
    storage: str                  # the weights as the backend holds them ("packed", "int8")
    devices: tuple[str, ...]      # device types it runs on
    quantize: bool = False        # asked for by quantize=name (from float32), not by dtype
    refused: str = ""             # why it cannot be asked for yet (empty: it can)


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("float32", torch.float32, "packed", ("cpu", "cuda")),
    Precision("bfloat16", torch.bfloat16, "packed", ("cpu", "cuda")),
    Precision("float16", torch.float16, "packed", ("cuda",)),
    Precision("int8", torch.float32, "int8", ("cpu",), quantize=True),
    Precision("fp8", torch.float16, "fp8", ("cuda",), quantize=True,
              refused="its CUDA kernels (e4m3 weights for sm_89/sm_90 GPUs) have not run on a "
                      "GPU; pybert.engine.fp8 holds the arithmetic they will compute"),
)}
# The dtypes an engine may be asked for by name, and the quantize= choices that can be made.
DTYPE_NAMES = tuple(n for n, p in PRECISIONS.items() if not p.quantize)
QUANTIZATIONS = tuple(n for n, p in PRECISIONS.items() if p.quantize and not p.refused)


def compute_dtypes(device_type: str) -> tuple[torch.dtype, ...]:
    """The dtypes an engine on ``device_type`` ("cpu", "cuda") computes in."""
    return tuple(p.compute for p in PRECISIONS.values()
                 if not p.quantize and device_type in p.devices)


def quantizations(device_type: str | None = None) -> tuple[str, ...]:
    """The quantize= choices an engine on ``device_type`` ("cpu", "cuda"; None: any) takes,
    read off PRECISIONS as it is now."""
    return tuple(n for n, p in PRECISIONS.items() if p.quantize and not p.refused and
                 (device_type is None or device_type in p.devices))
