"""Checkpoint formats, each read into plain data (:class:`Checkpoint`): pybert's own
(``native``), Hugging Face encoders (``huggingface``, ``architectures``) and sentence-transformers
(``sentence_transformers``), through the defensive file readers of ``files``. Nothing here
builds an engine or a text model: ``pybert.loader`` does, from what these return."""

from pathlib import Path

from .contents import Checkpoint, ClassifierSpec, HuggingFaceTokenizerSpec, LinearLayer, \
    SparseSpec, TokenizerSpec, WordTokenizerSpec
from .files import CheckpointError
from .huggingface import is_huggingface_dir, read_huggingface
from .native import CONFIG_NAME, VOCAB_NAME, WEIGHTS_NAME, checkpoint_dir, load_model, \
    read_config, read_native, save
from .sentence_transformers import is_sentence_transformers_dir, read_sentence_transformers

__all__ = ["Checkpoint", "CheckpointError", "ClassifierSpec", "HuggingFaceTokenizerSpec",
           "LinearLayer", "SparseSpec", "TokenizerSpec", "WordTokenizerSpec", "read_checkpoint", "read_config", "load_model", "save",
           "CONFIG_NAME", "VOCAB_NAME", "WEIGHTS_NAME"]


def read_checkpoint(path) -> Checkpoint:
    """The checkpoint directory at ``path``, whichever of the three formats it is in."""
    path = checkpoint_dir(path)
    if is_sentence_transformers_dir(Path(path)):
        return read_sentence_transformers(path)
    if is_huggingface_dir(path):
        return read_huggingface(path)
    return read_native(path)
