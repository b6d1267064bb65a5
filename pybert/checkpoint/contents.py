"""What a checkpoint reader hands the loader: plain data, no runtime objects.

Each format (pybert's own, Hugging Face encoders, sentence-transformers) is read into a
:class:`Checkpoint`: the config, the engine's packed weights (by the names of
``pybert._C.weight_shapes``), the description of its tokenizer, what the text model does
with the vectors (pooling, a Dense projection, normalisation, prompts, which NSP class means
"b follows a") and the task heads after the encoder (a sequence classifier, SPLADE's sparse
pooling of the MLM logits).
``pybert.loader`` alone turns it into an Engine, a tokenizer and a TextModel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import torch

from ..config import BertConfig
from ..tokenization.vocab import Vocab

__all__ = ["Checkpoint", "WordTokenizerSpec", "HuggingFaceTokenizerSpec", "TokenizerSpec",
           "LinearLayer", "ClassifierSpec", "SparseSpec", "ACTIVATIONS", "SCORE_ACTIVATIONS"]

# The activations a head's linear layer may end with.
ACTIVATIONS = ("identity", "tanh", "relu", "gelu", "silu", "sigmoid")
# What turns a classifier's logits into the scores it reports.
SCORE_ACTIVATIONS = ("identity", "sigmoid", "softmax")


@dataclass(frozen=True)
class WordTokenizerSpec:
    """d2l's word-level tokenizer: its vocabulary and the form of its training text."""

    vocab: Vocab
    text_format: str = "wikitext"


@dataclass(frozen=True)
class HuggingFaceTokenizerSpec:
    """A Hugging Face tokenizer: the text of tokenizer.json (any model the ``tokenizers``
    package reads), or the tokens of a BERT vocab.txt in id order, with tokenizer_config.json's
    settings (lower-casing, special tokens, model_max_length, truncation_side); ``max_len`` caps
    the tokens per sequence; ``token_types`` False when the model takes no token type ids."""

    max_len: int
    tokenizer_json: str | None = None
    vocab_tokens: list[str] | None = None
    settings: dict = field(default_factory=dict)
    token_types: bool = True


TokenizerSpec = Union[WordTokenizerSpec, HuggingFaceTokenizerSpec]


@dataclass(frozen=True)
class LinearLayer:
    """y = activation(x W^T + b): one layer of a head (W (out, in), b (out,) or None), then a
    LayerNorm of y where ``norm_weight`` is given (ModernBERT's classifier head)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    activation: str = "identity"   # one of ACTIVATIONS
    norm_weight: torch.Tensor | None = None
    norm_bias: torch.Tensor | None = None
    norm_eps: float = 1e-5


@dataclass(frozen=True)
class ClassifierSpec:
    """A sequence classifier on the first token's encoding (``pooling`` "cls"; ModernBERT's
    may take the mean of the tokens', "mean"): its layers, the label of each output and what
    turns the logits into scores (``score_activation``)."""

    layers: tuple[LinearLayer, ...]
    labels: tuple[str, ...]
    score_activation: str          # one of SCORE_ACTIVATIONS
    pooling: str = "cls"           # "cls" or "mean"


@dataclass(frozen=True)
class SparseSpec:
    """SPLADE: the MLM logits of every token, activation ``log(1 + relu(x))`` (applied twice for
    "log1p_relu"), pooled over the tokens by "max" or "sum"."""

    pooling: str = "max"
    activation: str = "relu"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as read from ``path`` by the reader of ``format``."""

    path: Path
    format: str                      # "pybert", "huggingface" or "sentence-transformers"
    config: BertConfig
    weights: dict[str, torch.Tensor]  # packed, as the checkpoint stores them (any float dtype)
    tokenizer: TokenizerSpec | None = None
    architecture: str = "BERT"       # the family, as /info reports it
    pooling: str = "cls"
    dense: tuple[LinearLayer, ...] = ()  # sentence-transformers Dense modules after pooling
    normalize: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    nsp_is_next_label: int = 1       # 1 in d2l, 0 in Hugging Face's BERT
    classifier: ClassifierSpec | None = None
    sparse: SparseSpec | None = None
    # BGE-M3's heads on every token's encoding: its lexical weights (H -> 1, then ReLU) and its
    # multi-vector (ColBERT) projection (H -> D, then normalised)
    lexical: LinearLayer | None = None
    multi_vector: LinearLayer | None = None
