"""The engine: a packed batch of token ids in, tensors out, through pybert._C.

- ``engine``: :class:`Engine` (build, run, capture) and the dtypes it computes in;
- ``inputs``: the checks of a batch, returning a :class:`~pybert.engine.inputs.PackedBatch`;
- ``weights``: the packed-weight layout as Python sees it, and :class:`WeightMap`, the table
  that says which of a checkpoint format's tensors make each packed weight;
- ``graphs``: the CUDA graph cache;
- ``ops``: the fake (meta) kernels of ``torch.ops.pybert.*``, for torch.compile;
- ``devices``: "auto" devices and default dtypes, resolved once for every caller.

The engine knows nothing of text or of checkpoint files.
"""

from . import ops  # noqa: F401  (fake kernels for torch.compile)
from .devices import default_dtype, resolve_device
from .engine import CPU_DTYPES, CUDA_DTYPES, QUANTIZATIONS, Engine, SlowPrecisionWarning
from .weights import WeightMap, WeightsError, pack_weights, weight_shapes

__all__ = ["Engine", "SlowPrecisionWarning", "CPU_DTYPES", "CUDA_DTYPES", "QUANTIZATIONS",
           "WeightMap", "WeightsError", "pack_weights", "weight_shapes",
           "default_dtype", "resolve_device"]
