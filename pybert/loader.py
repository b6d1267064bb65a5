"""The one loader: a checkpoint directory in, an engine and what the text model needs out.

``pybert.checkpoint`` reads each format into plain data (:class:`~pybert.checkpoint.Checkpoint`);
this module alone turns that data into runtime objects: the :class:`~pybert.engine.Engine`
(packed weights cast to its dtype, on its device), the tokenizer the checkpoint describes and
its heads (:mod:`pybert.heads`). ``pybert.text.TextModel`` wraps them with the pooling,
normalisation and prompts carried here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .checkpoint import Checkpoint, CheckpointError, HuggingFaceTokenizerSpec, SparseSpec, \
    WordTokenizerSpec, read_checkpoint
from .engine import Engine
from .heads import Classifier, LinearHead
from .tokenization import HuggingFaceTokenizer, WordTokenizer

__all__ = ["LoadedModel", "load_checkpoint", "build_tokenizer"]


@dataclass
class LoadedModel:
    """An engine and, when the checkpoint has a tokenizer, what turns texts into its inputs
    and its outputs into vectors."""

    engine: Engine
    tokenizer: object | None       # WordTokenizer or HuggingFaceTokenizer
    pooling: str = "cls"
    normalize: bool = False
    nsp_is_next_label: int = 1
    architecture: str = "BERT"
    dense: LinearHead | None = None        # sentence-transformers Dense modules, after pooling
    classifier: Classifier | None = None
    sparse: SparseSpec | None = None
    prompts: dict = field(default_factory=dict)
    default_prompt_name: str | None = None
    lexical: LinearHead | None = None       # BGE-M3's lexical weights, on every token
    multi_vector: LinearHead | None = None  # BGE-M3's multi-vector (ColBERT) projection


def build_tokenizer(spec, max_len: int, where="the checkpoint"):
    """The tokenizer a checkpoint's spec describes, for sequences of at most ``max_len``."""
    if isinstance(spec, WordTokenizerSpec):
        return WordTokenizer(spec.vocab, max_len, spec.text_format)
    if isinstance(spec, HuggingFaceTokenizerSpec):
        try:
            return HuggingFaceTokenizer(min(spec.max_len, max_len), spec.tokenizer_json,
                                        spec.vocab_tokens, spec.settings, spec.token_types)
        except ValueError as err:
            raise CheckpointError(f"{where}: {err}") from None
    raise TypeError(f"not a tokenizer spec: {type(spec).__name__}")


def load_checkpoint(path, device="cpu", dtype: torch.dtype = torch.float32,
                    revision: str | None = None, **engine_options) -> LoadedModel:
    """Read the checkpoint at ``path`` (pybert, Hugging Face BERT or sentence-transformers; a
    directory or a Hugging Face hub id, at ``revision``) and build its engine and tokenizer.
    ``engine_options``: cuda_graphs, max_graphs, quantize, cpu_plan."""
    checkpoint: Checkpoint = read_checkpoint(path, revision)
    tokenizer = None
    if checkpoint.tokenizer is not None:  # before the engine: it is the cheaper check
        tokenizer = build_tokenizer(checkpoint.tokenizer, checkpoint.config.max_len,
                                    checkpoint.path)
    engine = Engine(checkpoint.config, checkpoint.weights, device=device, dtype=dtype,
                    **engine_options)
    try:
        dense = LinearHead(checkpoint.dense, engine.device, "Dense module") \
            if checkpoint.dense else None
        classifier = None
        if checkpoint.classifier is not None:
            spec = checkpoint.classifier
            classifier = Classifier(LinearHead(spec.layers, engine.device, "classifier"),
                                    spec.labels, spec.score_activation, spec.pooling)
        lexical, multi_vector = (
            None if layer is None else LinearHead([layer], engine.device, what)
            for layer, what in ((checkpoint.lexical, "lexical head"),
                                (checkpoint.multi_vector, "multi-vector head")))
    except ValueError as err:
        raise CheckpointError(f"{checkpoint.path}: {err}") from None
    return LoadedModel(engine, tokenizer, checkpoint.pooling, checkpoint.normalize,
                       checkpoint.nsp_is_next_label, checkpoint.architecture, dense, classifier,
                       checkpoint.sparse, dict(checkpoint.prompts),
                       checkpoint.default_prompt_name, lexical, multi_vector)
