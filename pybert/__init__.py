"""pybert: fast BERT inference for PyTorch users, checkpoint-compatible with d2l's BERT.

The package's layers, bottom up (each imports only those below it): ``config`` and ``model``
(the eager reference); ``engine`` (pybert._C behind the Engine); ``tokenization``;
``checkpoint`` (formats read into plain data); ``loader`` (that data made into an engine and a
tokenizer); ``text`` (TextModel); ``api`` (load, encode); then ``job``, ``ray``, ``serve``,
``train``, ``bench`` and ``cli`` around them. docs/architecture.md draws it.
"""

import torch  # noqa: F401  (loads libtorch before the extension)

try:
    from . import _C  # registers torch.ops.pybert.*
except ImportError as err:  # a source checkout on sys.path, not the installed package
    raise ImportError(
        f"pybert's compiled extension is missing next to {__file__}: build and install it "
        "with `pip install .` and import pybert from outside the source tree") from err
from .api import encode, load  # noqa: E402
from .checkpoint import load_model, save  # noqa: E402
from .config import BertConfig  # noqa: E402
from .engine import Engine  # noqa: E402
from .model import BERTModel, get_tokens_and_segments  # noqa: E402
from .text import TextModel, text_model_of  # noqa: E402,F401
from .tokenization import Vocab  # noqa: E402

__all__ = ["BERTModel", "BertConfig", "Engine", "TextModel", "Vocab", "encode",
           "get_tokens_and_segments", "load", "load_model", "save"]
__version__ = "0.1.0"
