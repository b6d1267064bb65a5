"""What every tokenizer of the engine (the word-level one of d2l checkpoints, the WordPiece one
of Hugging Face checkpoints) shares: the accepted inputs, the truncation choices and the one
warning."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

__all__ = ["text_item", "check_truncation", "warn_cut", "TRUNCATIONS"]

TRUNCATIONS = ("warn", "error")


def text_item(item, index: int):
    """``item`` as a str or a (text_a, text_b) tuple; TypeError naming texts[index] if neither."""
    if isinstance(item, str):
        return item
    if isinstance(item, Sequence) and len(item) == 2 and all(isinstance(t, str) for t in item):
        return tuple(item)
    raise TypeError(f"texts[{index}] must be a str or a (text_a, text_b) pair, got "
                    f"{type(item).__name__}")


def check_truncation(truncation: str) -> None:
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be 'warn' or 'error', got {truncation!r}")


def warn_cut(cut: int, max_len: int) -> None:
    if cut:
        warnings.warn(f"{cut} text(s) were longer than max_len={max_len} and were cut",
                      stacklevel=4)
