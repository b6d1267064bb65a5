"""What every tokenizer of the engine (the word-level one of d2l checkpoints, the one of Hugging
Face checkpoints) shares: the accepted inputs, the truncation choices and the one
warning."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

__all__ = ["text_item", "check_text", "check_truncation", "check_side", "warn_cut",
           "split_windows", "TRUNCATIONS", "TRUNCATION_SIDES"]

TRUNCATIONS = ("warn", "error")
TRUNCATION_SIDES = ("right", "left")  # which end of a text too long is cut


def text_item(item, index: int):
    """``item`` as a str or a (text_a, text_b) tuple; TypeError naming texts[index] if neither,
    ValueError if a text is not valid Unicode (see check_text)."""
    if isinstance(item, str):
        return check_text(item, f"texts[{index}]")
    if isinstance(item, Sequence) and len(item) == 2 and all(isinstance(t, str) for t in item):
        return tuple(check_text(t, f"texts[{index}]") for t in item)
    raise TypeError(f"texts[{index}] must be a str or a (text_a, text_b) pair, got "
                    f"{type(item).__name__}")


def check_text(text: str, where: str) -> str:
    """``text``, or ValueError naming ``where`` when it holds a lone surrogate ("\\ud800" is
    valid JSON and a valid Python str, but no UTF-8 text: tokenizers refuse it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{where} is not valid Unicode: a lone surrogate at character "
                         f"{err.start}") from None
    return text


def check_truncation(truncation: str) -> None:
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be 'warn' or 'error', got {truncation!r}")


def check_side(side: str | None, default: str = "right") -> str:
    """The truncation side: ``side``, or ``default`` when None; ValueError otherwise."""
    side = default if side is None else side
    if side not in TRUNCATION_SIDES:
        raise ValueError(f"truncation side must be 'right' or 'left', got {side!r}")
    return side


def warn_cut(cut: int, max_len: int) -> None:
    if cut:
        warnings.warn(f"{cut} text(s) were longer than max_len={max_len} and were cut",
                      stacklevel=4)


def split_windows(prefix: list, body: list, suffix: list, max_len: int, overlap: int) -> list:
    """``prefix + body + suffix`` as it is when it fits ``max_len``, else the windows of
    ``body`` of the most tokens that fit between prefix and suffix, each overlapping the one
    before by ``overlap`` tokens (the last one may overlap more), as (ids, segments 0)."""
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"overlap must be an int >= 0, got {overlap!r}")
    if len(prefix) + len(body) + len(suffix) <= max_len:
        ids = prefix + body + suffix
        return [(ids, [0] * len(ids))]
    width = max_len - len(prefix) - len(suffix)
    if overlap >= width:
        raise ValueError(f"overlap {overlap} leaves no new tokens in a window of {width}")
    starts = list(range(0, len(body) - width, width - overlap)) + [len(body) - width]
    return [(prefix + body[s:s + width] + suffix, [0] * max_len) for s in starts]
