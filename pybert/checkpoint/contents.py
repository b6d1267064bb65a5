"""What a checkpoint reader hands the loader: plain data, no runtime objects.

Each format (pybert's own, Hugging Face BERT, sentence-transformers) is read into a
:class:`Checkpoint`: the config, the engine's packed weights (by the names of
``pybert._C.weight_shapes``), the description of its tokenizer and what the text model does
with the vectors (pooling, normalisation, which NSP class means "b follows a").
``pybert.loader`` alone turns it into an Engine, a tokenizer and a TextModel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import torch

from ..config import BertConfig
from ..tokenization.vocab import Vocab

__all__ = ["Checkpoint", "WordTokenizerSpec", "WordPieceTokenizerSpec", "TokenizerSpec"]


@dataclass(frozen=True)
class WordTokenizerSpec:
    """d2l's word-level tokenizer: its vocabulary and the form of its training text."""

    vocab: Vocab
    text_format: str = "wikitext"


@dataclass(frozen=True)
class WordPieceTokenizerSpec:
    """A Hugging Face WordPiece tokenizer: the text of tokenizer.json, or the tokens of
    vocab.txt in id order, with tokenizer_config.json's settings (lower-casing, special
    tokens, model_max_length); ``max_len`` caps the tokens per sequence."""

    max_len: int
    tokenizer_json: str | None = None
    vocab_tokens: list[str] | None = None
    settings: dict = field(default_factory=dict)


TokenizerSpec = Union[WordTokenizerSpec, WordPieceTokenizerSpec]


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as read from ``path`` by the reader of ``format``."""

    path: Path
    format: str                      # "pybert", "huggingface" or "sentence-transformers"
    config: BertConfig
    weights: dict[str, torch.Tensor]  # packed, as the checkpoint stores them (any float dtype)
    tokenizer: TokenizerSpec | None = None
    pooling: str = "cls"
    normalize: bool = False
    nsp_is_next_label: int = 1       # 1 in d2l, 0 in Hugging Face's BERT
