"""The one loader: a checkpoint directory in, an engine and what the text model needs out.

``pybert.checkpoint`` reads each format into plain data (:class:`~pybert.checkpoint.Checkpoint`);
this module alone turns that data into runtime objects: the :class:`~pybert.engine.Engine`
(packed weights cast to its dtype, on its device) and the tokenizer the checkpoint describes.
``pybert.text.TextModel`` wraps the two with the pooling and normalisation carried here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checkpoint import Checkpoint, CheckpointError, WordPieceTokenizerSpec, WordTokenizerSpec, \
    read_checkpoint
from .engine import Engine
from .tokenization import WordPieceTokenizer, WordTokenizer

__all__ = ["LoadedModel", "load_checkpoint", "build_tokenizer"]


@dataclass
class LoadedModel:
    """An engine and, when the checkpoint has a tokenizer, what turns texts into its inputs
    and its outputs into vectors."""

    engine: Engine
    tokenizer: object | None       # WordTokenizer or WordPieceTokenizer
    pooling: str = "cls"
    normalize: bool = False
    nsp_is_next_label: int = 1


def build_tokenizer(spec, max_len: int, where="the checkpoint"):
    """The tokenizer a checkpoint's spec describes, for sequences of at most ``max_len``."""
    if isinstance(spec, WordTokenizerSpec):
        return WordTokenizer(spec.vocab, max_len, spec.text_format)
    if isinstance(spec, WordPieceTokenizerSpec):
        try:
            return WordPieceTokenizer(spec.max_len, spec.tokenizer_json, spec.vocab_tokens,
                                      spec.settings)
        except ValueError as err:
            raise CheckpointError(f"{where}: {err}") from None
    raise TypeError(f"not a tokenizer spec: {type(spec).__name__}")


def load_checkpoint(path, device="cpu", dtype: torch.dtype = torch.float32,
                    **engine_options) -> LoadedModel:
    """Read the checkpoint at ``path`` (pybert, Hugging Face BERT or sentence-transformers)
    and build its engine and tokenizer. ``engine_options``: cuda_graphs, max_graphs, quantize,
    cpu_plan."""
    checkpoint: Checkpoint = read_checkpoint(path)
    tokenizer = None
    if checkpoint.tokenizer is not None:  # before the engine: it is the cheaper check
        tokenizer = build_tokenizer(checkpoint.tokenizer, checkpoint.config.max_len,
                                    checkpoint.path)
    engine = Engine(checkpoint.config, checkpoint.weights, device=device, dtype=dtype,
                    **engine_options)
    return LoadedModel(engine, tokenizer, checkpoint.pooling, checkpoint.normalize,
                       checkpoint.nsp_is_next_label)
