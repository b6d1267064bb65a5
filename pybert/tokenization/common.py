"""What every tokenizer of the engine (the word-level one of d2l checkpoints, the one of Hugging
Face checkpoints) shares: the accepted inputs, the truncation choices and the one
warning."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from .truncation import TooLong

__all__ = ["text_item", "check_text", "check_truncation", "check_side", "warn_cut",
           "TruncationCount", "wrap_ids",
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


class TruncationCount:
    """How many texts a job or a request tokenised, and how many of them were cut: counted
    by encode_all, said once at the end (summary) instead of a warning per call."""

    def __init__(self):
        self.texts = self.cut = 0
        self.max_len = 0

    def add(self, texts: int, cut: int, max_len: int) -> None:
        self.texts += texts
        self.cut += cut
        self.max_len = max_len

    def summary(self) -> str | None:
        """One line, or None where nothing was cut."""
        if not self.cut:
            return None
        return (f"{self.cut} text(s) of {self.texts} were longer than max_len={self.max_len} "
                f"tokens and were cut to {self.max_len}")


def warn_cut(cut: int, max_len: int, texts: int = 0,
             count: TruncationCount | None = None) -> None:
    """Count the cut texts in ``count``, or (without one) warn of them."""
    if count is not None:
        count.add(texts, cut, max_len)
    elif cut:
        warnings.warn(f"{cut} text(s) were longer than max_len={max_len} and were cut",
                      stacklevel=4)


def wrap_ids(rows: list, prefix: list, suffix: list, max_len: int, truncation: str = "warn",
             side: str = "right", count: TruncationCount | None = None) -> list:
    """(ids, token types) of token-id sequences given without special tokens (OpenAI's token
    arrays), each as ``prefix + ids + suffix``; a sequence too long for ``max_len`` is cut
    from ``side`` (counted in ``count``, else a warning) or, with truncation="error", raises."""
    check_truncation(truncation)
    room = max_len - len(prefix) - len(suffix)
    out, cut = [], 0
    for i, ids in enumerate(rows):
        if len(ids) > room:
            if truncation == "error":
                raise TooLong(f"input[{i}] has {len(ids)} tokens, more than the {room} "
                                 f"max_len={max_len} leaves beside the special tokens; pass "
                                 "truncation='warn' to cut it")
            ids = ids[len(ids) - room:] if side == "left" else ids[:room]
            cut += 1
        sequence = [*prefix, *ids, *suffix]
        out.append((sequence, [0] * len(sequence)))
    warn_cut(cut, max_len, len(rows), count)
    return out


class Windows:
    """``prefix + body + suffix`` as it is when it fits ``max_len``, else the windows of
    ``body`` of the most tokens that fit between prefix and suffix, each overlapping the one
    before by ``overlap`` tokens (the last one may overlap more), as (ids, segments 0). Made
    one at a time as they are iterated: a long text with a large overlap has many windows,
    and they are never all held at once; ``len()`` says how many there are."""

    def __init__(self, prefix: list, body: list, suffix: list, max_len: int, overlap: int):
        if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
            raise ValueError(f"overlap must be an int >= 0, got {overlap!r}")
        self.prefix, self.body, self.suffix = prefix, body, suffix
        self.width = max_len - len(prefix) - len(suffix)
        self.whole = len(body) <= self.width
        if not self.whole and overlap >= self.width:
            raise ValueError(f"overlap {overlap} leaves no new tokens in a window of "
                             f"{self.width}")
        self.stride = self.width - overlap

    def starts(self) -> range:
        return range(0, max(0, len(self.body) - self.width), self.stride)

    def __len__(self) -> int:
        return 1 if self.whole else len(self.starts()) + 1

    def __iter__(self):
        if self.whole:
            ids = self.prefix + self.body + self.suffix
            yield ids, [0] * len(ids)
            return
        for s in [*self.starts(), len(self.body) - self.width]:
            ids = self.prefix + self.body[s:s + self.width] + self.suffix
            yield ids, [0] * len(ids)


def split_windows(prefix: list, body: list, suffix: list, max_len: int,
                  overlap: int) -> Windows:
    """The windows of a text (see Windows)."""
    return Windows(prefix, body, suffix, max_len, overlap)
