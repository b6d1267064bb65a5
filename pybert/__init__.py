"""pybert: fast BERT inference for PyTorch users, checkpoint-compatible with d2l's BERT.

The package's layers, bottom up (each imports only those below it): ``config`` and ``model``
(the eager reference); ``engine`` (pybert._C behind the Engine); ``tokenization``;
``checkpoint`` (formats read into plain data); ``loader`` (that data made into an engine and a
tokenizer); ``text`` (TextModel); ``api`` (load, encode); then ``job``, ``ray``, ``serve``,
``train``, ``bench`` and ``cli`` around them. docs/architecture.md draws it.

The public names below are imported on first use, so that ``import pybert`` (and the
``pybert`` command's ``--help``) does not load torch; the first use of any of them, or of
``pybert._C``, loads torch and the extension (which registers ``torch.ops.pybert.*``).
"""

import importlib

# public name -> the module that defines it
_PUBLIC = {"encode": "api", "load": "api", "load_model": "checkpoint", "save": "checkpoint",
           "BertConfig": "config", "Engine": "engine", "BERTModel": "model",
           "get_tokens_and_segments": "model", "TextModel": "text", "text_model_of": "text",
           "Vocab": "tokenization"}

# subpackages and modules reachable as attributes (pybert.tokenization, ...)
_SUBMODULES = ("api", "bench", "checkpoint", "cli", "config", "d2l", "engine", "heads", "job",
               "loader", "model", "ray", "serve", "text", "tokenization", "train")

__all__ = ["BERTModel", "BertConfig", "Engine", "TextModel", "Vocab", "encode",
           "get_tokens_and_segments", "load", "load_model", "save"]
__version__ = "0.1.0"


def _load_extension():
    import torch  # noqa: F401  (loads libtorch before the extension)

    try:
        return importlib.import_module("._C", __name__)  # registers torch.ops.pybert.*
    except ImportError as err:  # a source checkout on sys.path, not the installed package
        raise ImportError(
            f"pybert's compiled extension is missing next to {__file__}: build and install "
            "it with `pip install .` and import pybert from outside the source tree") from err


def __getattr__(name):
    if name == "_C":
        value = _load_extension()
    elif name in _PUBLIC:
        _load_extension()
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    elif name in _SUBMODULES:
        _load_extension()
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'pybert' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC) | set(_SUBMODULES))
