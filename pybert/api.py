"""The top-level functions: ``pybert.load`` (a checkpoint to an engine with its text model)
and ``pybert.encode`` (token ids or texts to vectors, from an engine, a text model or a path)."""

from __future__ import annotations

import collections.abc
import functools

import torch

from .config import BATCH_TOKENS
from .engine import Engine
from .checkpoint import locate
from .loader import load_checkpoint
from .text import TextModel, text_model_of

__all__ = ["load", "encode"]


def load(path, device="cpu", dtype: torch.dtype = torch.float32, revision: str | None = None,
         **engine_options) -> Engine:
    """An :class:`~pybert.Engine` serving the checkpoint at ``path``: a pybert checkpoint, a
    Hugging Face encoder or a sentence-transformers model, as a directory or as a Hugging Face
    hub id ("sentence-transformers/all-MiniLM-L6-v2", at ``revision``; fetched into the hub's
    cache). When the checkpoint has a vocabulary, ``pybert.text_model_of(engine)`` (see
    :class:`pybert.TextModel`) turns texts into vectors, and ``pybert.encode(engine, texts)``
    works. ``engine_options``: cuda_graphs,
    max_graphs, quantize, cpu_plan."""
    loaded = load_checkpoint(path, device, dtype, revision, **engine_options)
    if loaded.tokenizer is not None:
        TextModel.of_loaded(loaded)
    return loaded.engine


def encode(model, inputs, segments=None, valid_lens=None, *, device="cpu",
           dtype=torch.float32, pooling=None, return_type="numpy", batch_tokens=BATCH_TOKENS,
           truncation="warn"):
    """Encode token ids or texts.

    ``model`` is a :class:`TextModel`, an :class:`Engine`, the path of a checkpoint
    directory or a Hugging Face hub id (loaded with ``device`` and ``dtype``, once: later
    calls reuse it). ``inputs``
    is either

    - token ids (B, S) with optional ``segments`` and ``valid_lens``: returns the encodings
      (B, S, H) as a tensor, zeros at padded positions; or
    - a text, or a list (a tuple, a generator, a numpy array of strings) of texts and
      (text_a, text_b) pairs: tokenised with the checkpoint's
      vocabulary, sorted into length buckets of at most ``batch_tokens`` padded tokens, and
      returned in the caller's order, pooled by ``pooling`` ("cls": the <cls> vector, "mean":
      the mean over real tokens, (N, H); "tokens": a list of (len_i, H) per-token encodings;
      default: the model's own, "cls" unless a sentence-transformers model says otherwise,
      which also L2-normalises when it has a Normalize module) as ``return_type`` ("numpy"
      or "torch"). Texts longer than max_len are cut with a warning, or raise with
      ``truncation="error"``. An empty list gives an empty (0, H) result.
    """
    if isinstance(model, (Engine, TextModel)):
        engine = model.engine if isinstance(model, TextModel) else model
    else:
        engine = _cached_load(model, device, dtype)
    if isinstance(inputs, (bytes, bytearray)):
        raise TypeError("inputs are bytes: decode them to str first (e.g. "
                        "inputs.decode('utf-8')); token ids go as a tensor")
    if getattr(getattr(inputs, "dtype", None), "kind", None) in ("U", "S", "O"):
        inputs = inputs.tolist()  # a numpy array (or pandas Series) of strings
    elif isinstance(inputs, collections.abc.Iterator):
        inputs = list(inputs)  # a generator of texts
    if _is_text(inputs) or (isinstance(inputs, (list, tuple)) and len(inputs) == 0):
        if segments is not None or valid_lens is not None:
            raise ValueError("segments and valid_lens go with token ids, not with texts")
        text_model = model if isinstance(model, TextModel) else text_model_of(engine)
        return text_model.encode(inputs, pooling=pooling, return_type=return_type,
                                 batch_tokens=batch_tokens, truncation=truncation)
    return engine.encode(inputs, segments, valid_lens)


def _cached_load(path, device, dtype) -> Engine:
    """pybert.encode(path, ...) in a loop loads the checkpoint once: engines are cached by
    path, device and dtype, and reloaded when the checkpoint's files change."""
    root = locate(path).resolve()
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                  for p in sorted(root.glob("*")) if p.is_file()) if root.is_dir() else ()
    return _load_cached(str(root), stamp, str(device), dtype)


@functools.lru_cache(maxsize=4)
def _load_cached(root: str, stamp: tuple, device: str, dtype) -> Engine:
    return load(root, device=device, dtype=dtype)


def _is_text(inputs) -> bool:
    if isinstance(inputs, str):
        return True
    if isinstance(inputs, (list, tuple)) and inputs:
        first = inputs[0]
        return isinstance(first, str) or (isinstance(first, (tuple, list)) and len(first) > 0
                                          and isinstance(first[0], str))
    return False
