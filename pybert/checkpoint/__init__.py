"""Checkpoint formats, each read into plain data (:class:`Checkpoint`): pybert's own
(``native``), Hugging Face encoders (``huggingface``, ``families``: a file per family) and sentence-transformers
(``sentence_transformers``; BGE-M3's heads beside them: ``bge_m3``), through the defensive
file readers of ``files``. Nothing here
builds an engine or a text model: ``pybert.loader`` does, from what these return."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .bge_m3 import read_bge_m3_heads
from .contents import Checkpoint, ClassifierSpec, HuggingFaceTokenizerSpec, LinearLayer, \
    SparseSpec, TokenizerSpec, WordTokenizerSpec
from .files import CheckpointError
from .hub import is_hub_id, locate
from .huggingface import is_huggingface_dir, read_huggingface
from .native import CONFIG_NAME, VOCAB_NAME, WEIGHTS_NAME, checkpoint_dir, load_model, \
    read_config, read_native, save
from .sentence_transformers import is_sentence_transformers_dir, read_sentence_transformers

__all__ = ["Checkpoint", "CheckpointError", "ClassifierSpec", "HuggingFaceTokenizerSpec",
           "LinearLayer", "SparseSpec", "TokenizerSpec", "WordTokenizerSpec", "read_checkpoint",
           "read_config", "load_model", "save", "locate", "is_hub_id",
           "CONFIG_NAME", "VOCAB_NAME", "WEIGHTS_NAME"]


def read_checkpoint(path, revision: str | None = None) -> Checkpoint:
    """The checkpoint at ``path`` (a directory, or a Hugging Face hub id fetched into its
    cache at ``revision``), whichever of the three formats it is in."""
    path = checkpoint_dir(locate(path, revision))
    if not (path / CONFIG_NAME).exists() and not (path / "modules.json").exists():
        below = sorted(p.parent.name for p in path.glob(f"*/{CONFIG_NAME}"))
        if below:
            raise FileNotFoundError(f"checkpoint {path} has no {CONFIG_NAME}, but its folder"
                                    f"{'s' if len(below) > 1 else ''} {', '.join(below[:5])} "
                                    f"do{'' if len(below) > 1 else 'es'}: pass "
                                    f"{path / below[0]} instead")
    if is_sentence_transformers_dir(Path(path)):
        checkpoint = read_sentence_transformers(path)
    elif is_huggingface_dir(path):
        checkpoint = read_huggingface(path)
    else:
        return read_native(path)
    lexical, multi_vector = read_bge_m3_heads(path, checkpoint.config.num_hiddens)
    return replace(checkpoint, lexical=lexical, multi_vector=multi_vector)
