"""pybert: fast BERT inference for PyTorch users, checkpoint-compatible with d2l's BERT."""

import torch  # noqa: F401  (loads libtorch before the extension)

try:
    from . import _C  # registers torch.ops.pybert.*
except ImportError as err:  # a source checkout on sys.path, not the installed package
    raise ImportError(
        f"pybert's compiled extension is missing next to {__file__}: build and install it "
        "with `pip install .` and import pybert from outside the source tree") from err
from . import ops  # noqa: E402,F401  (fake kernels for torch.compile)
from .checkpoint import load, load_model, save
from .config import BertConfig
from .engine import Engine
from .model import BERTModel, get_tokens_and_segments
from .vocab import Vocab

__all__ = ["BERTModel", "BertConfig", "Engine", "Vocab", "encode", "get_tokens_and_segments",
           "load", "load_model", "save"]
__version__ = "0.1.0"


def encode(model, tokens, segments=None, valid_lens=None, device="cpu",
           dtype=torch.float32) -> torch.Tensor:
    """Encodings (B, S, H) of a batch of token ids.

    ``model`` is an :class:`Engine` or the path of a checkpoint directory, which is loaded
    with ``device`` and ``dtype`` (those are ignored for an Engine).
    """
    engine = model if isinstance(model, Engine) else load(model, device=device, dtype=dtype)
    return engine.encode(tokens, segments, valid_lens)
