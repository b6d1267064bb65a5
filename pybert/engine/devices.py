"""Where and in what precision to run when the caller says "auto" or nothing: decided here
once for the CLI, the Ray workers, the server and the trainer."""

from __future__ import annotations

import torch

from .. import _C
from .precision import DTYPE_NAMES, PRECISIONS

__all__ = ["resolve_device", "default_dtype", "runnable_dtypes", "DTYPE_NAMES",
           "CUDA_LAST_RUN"]


# What a GPU last said of the CUDA engine, shown by the README and /info. Update it when the
# GPU session (benchmarks/gpu_session.sh) runs again on a newer commit.
CUDA_LAST_RUN = {
    "commit": "6c9fb5f",
    "date": "2026-11-26",
    "device": "NVIDIA H100 80GB HBM3",
    "passed": "CUDA tests (fp32/fp16/bf16 parity), compute-sanitizer memcheck, benchmark",
    "compiled_only_since": [
        "prepared-weight seam (WeightStorage, GemmWeight, prepare_cuda_weights, the GEMM "
        "plan cache keyed by weight type) and kernels/cuda/aten_adapter.cpp",
        "ELECTRA's embedding projection and the families' GPU tests",
        "modern layers: rotary.cu, add_residual_layernorm, LayerNorm without bias, "
        "windowed attention (own kernel and FlashAttention-2's window)",
        "pybert serve --devices with CUDA engines",
    ],
}


def resolve_device(name="auto", *, needs_engine: bool = True, local_rank: int = 0) -> torch.device:
    """``name`` ("auto", "cpu", "cuda", "cuda:N" or a torch.device) as a torch.device.

    "auto" is the GPU where one is usable, else the CPU; for the engine (``needs_engine``) a
    GPU is usable only when this build of pybert has CUDA kernels too (training needs only a
    CUDA torch). A bare "cuda" becomes ``cuda:local_rank`` (a process's own GPU under
    torchrun)."""
    if isinstance(name, str) and name == "auto":
        usable = torch.cuda.is_available() and (_C.cuda_available or not needs_engine)
        name = "cuda" if usable else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} requested but no CUDA GPU is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def default_dtype(device, dtype=None):
    """``dtype`` (a torch.dtype, a name from DTYPE_NAMES, "auto" or None) as a torch.dtype;
    None is float16 on a GPU and float32 on the CPU; "auto" is float16 on a GPU and stays
    "auto" for a CPU engine, which measures whether bfloat16 is faster here
    (pybert.engine.auto_dtype)."""
    cuda = torch.device(device).type == "cuda"
    if dtype is None or (dtype == "auto" and cuda):
        return torch.float16 if cuda else torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be auto or one of {DTYPE_NAMES}, got {dtype!r}")
    if dtype not in runnable_dtypes(device):
        raise ValueError(f"dtype {dtype} does not run on {torch.device(device)}: "
                         f"choose auto or one of {runnable_dtypes(device)}")
    return getattr(torch, dtype)


def runnable_dtypes(device=None) -> tuple[str, ...]:
    """The dtypes an engine on ``device`` computes in (None: on any device of this
    machine): float32 and bfloat16 on the CPU, float16 too on a GPU this build runs."""
    gpu = torch.cuda.is_available() and _C.cuda_available
    if device is not None:
        gpu = torch.device(device).type == "cuda"
    return tuple(n for n in DTYPE_NAMES if ("cuda" if gpu else "cpu") in PRECISIONS[n].devices)
