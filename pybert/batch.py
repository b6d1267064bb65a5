"""Deprecated: texts in, vectors out moved to pybert.text (TextModel), the batch job to
pybert.job. The old names still work here, with a DeprecationWarning."""

import warnings

_MOVED = {
    "plan_batches": ("pybert.text", "plan_batches"),
    "pack_batch": ("pybert.text", "pack_batch"),
    "pad_batch": ("pybert.text", "pad_batch"),
    "POOLINGS": ("pybert.text", "POOLINGS"),
    "read_texts": ("pybert.job", "read_texts"),
    "count_rows": ("pybert.job", "count_rows"),
    "run_encode_job": ("pybert.job", "run_encode_job"),
}


def iter_encoded(engine, texts, pooling="cls", batch_tokens=16384, chunk_size=4096,
                 truncation="warn", prefetch=4):
    """Deprecated: ``pybert.TextModel.iter_encode``."""
    from .text import text_model_of

    warnings.warn("pybert.batch.iter_encoded is deprecated: use TextModel.iter_encode",
                  DeprecationWarning, stacklevel=2)
    return text_model_of(engine).iter_encode(texts, pooling, batch_tokens, chunk_size,
                                             truncation, prefetch)


def encode_texts(engine, texts, pooling="cls", return_type="numpy", batch_tokens=16384,
                 truncation="warn"):
    """Deprecated: ``pybert.TextModel.encode``."""
    from .text import text_model_of

    warnings.warn("pybert.batch.encode_texts is deprecated: use TextModel.encode",
                  DeprecationWarning, stacklevel=2)
    return text_model_of(engine).encode(texts, pooling, return_type, batch_tokens, truncation)


def __getattr__(name):
    if name not in _MOVED:
        raise AttributeError(f"module 'pybert.batch' has no attribute {name!r}")
    import importlib

    module, attribute = _MOVED[name]
    warnings.warn(f"pybert.batch.{name} is deprecated: use {module}.{attribute}",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(module), attribute)
