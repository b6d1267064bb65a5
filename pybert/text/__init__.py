"""Texts in, vectors out: the text model around an engine.

A :class:`TextModel` (``model.py``) is an :class:`~pybert.Engine` plus what turns texts into
its inputs and its outputs into answers: the checkpoint's tokenizer and prompts, its pooling,
Dense modules and normalisation (``pooling.py``), which NSP class means "b follows a", and its
task heads (``head_outputs.py``: SPLADE's sparse vectors, fill-mask, NSP). Every task of
:mod:`pybert.tasks` runs on packed batches (``batching.py``): texts are taken a chunk at a time
(bounded memory whatever the input size), tokenised on a worker thread while the engine runs
the previous batches, grouped by length into batches of at most ``batch_tokens`` (batch size x
longest length), run without padding, and handed back in the caller's order.
"""

from .batching import pack_batch, plan_batches
from .head_outputs import SparseVector
from .model import TextModel, load_text_model, text_model_of
from .pooling import POOLINGS

__all__ = ["TextModel", "SparseVector", "text_model_of", "load_text_model", "plan_batches",
           "pack_batch", "POOLINGS"]
