"""Word-level tokenisation, the book's rule: lower-case, split on white space.

Raw text (not pre-tokenised like WikiText) is first brought to WikiText's form by
``normalize_text``: punctuation split off words, so that "Hello, world." gives the same words
as WikiText's "hello , world ." and sentences end in " . ". A checkpoint records which form its
training text had (``text_format``), and :class:`WordTokenizer` applies the same one.
"""

from __future__ import annotations

import re

from ..model import get_tokens_and_segments
from .common import TruncationCount, check_side, check_truncation, split_windows, text_item, \
    warn_cut, wrap_ids
from .truncation import TooLong, keep

__all__ = ["split_words", "normalize_text", "split_sentences", "WordTokenizer", "TEXT_FORMATS"]

TEXT_FORMATS = ("wikitext", "plain")
# Reserved tokens such as <mask> survive normalisation whole.
_WORD_OR_PUNCT = re.compile(r"<[a-z]+>|\w+(?:['’]\w+)*|[^\w\s]", re.UNICODE)


def split_words(text: str) -> list[str]:
    """The book's rule: lower-case, then split on white space."""
    return text.lower().split()


def normalize_text(text: str) -> str:
    """Lower-case and put spaces around punctuation: "It's 3.5, ok." -> "it's 3 . 5 , ok ."."""
    return " ".join(_WORD_OR_PUNCT.findall(text.lower()))


def split_sentences(paragraph: str) -> list[str]:
    """The book's sentence rule for WikiText-format text: split on " . "."""
    return paragraph.strip().lower().split(" . ")


class WordTokenizer:
    """Texts and text pairs to (ids, segments) with a checkpoint's vocabulary.

    ``<cls> a <sep>`` or ``<cls> a <sep> b <sep>``; unknown words become ``<unk>``. Inputs longer
    than ``max_len`` are cut (the longer side of a pair first) with a warning, or raise
    ValueError when ``truncation="error"``.
    """

    def __init__(self, vocab, max_len: int, text_format: str = "wikitext"):
        if text_format not in TEXT_FORMATS:
            raise ValueError(f"text_format must be one of {TEXT_FORMATS}, got {text_format!r}")
        missing = [t for t in ("<pad>", "<mask>", "<cls>", "<sep>") if t not in vocab.token_to_idx]
        if missing:
            raise ValueError(f"the vocabulary lacks the reserved tokens {missing}: without them "
                             "texts cannot be framed (<cls>, <sep>) or masked (<mask>)")
        self.vocab = vocab
        self.max_len = max_len
        self.text_format = text_format
        self.pad_id = vocab["<pad>"]
        self.mask_id = vocab["<mask>"]

    def id_to_token(self, index: int) -> str:
        return self.vocab.to_tokens(index)

    def words(self, text: str) -> list[str]:
        if not isinstance(text, str):
            raise TypeError(f"a text must be a str, got {type(text).__name__}")
        return split_words(text) if self.text_format == "wikitext" else \
            normalize_text(text).split()

    def encode(self, item, truncation: str = "warn", index: int = 0, side: str = "right"):
        """(ids, segments, truncated) of one text or (text_a, text_b) pair; words beyond
        max_len are cut from ``side`` ("right" or "left"), longest text first."""
        item = text_item(item, index)
        if isinstance(item, str):
            a, b = self.words(item), None
        else:
            a, b = self.words(item[0]), self.words(item[1])
        budget = self.max_len - (2 if b is None else 3)
        if budget < (1 if b is None else 2):
            raise ValueError(f"max_len {self.max_len} leaves no room for a text")
        truncated = len(a) + (len(b) if b is not None else 0) > budget
        if truncated:
            if truncation == "error":
                raise TooLong(f"texts[{index}] has {len(a) + len(b or [])} words, more than "
                                 f"max_len={self.max_len} allows; pass truncation='warn' to cut "
                                 "it")
            if b is None:
                a = keep(a, budget, side)
            else:  # longest first, one word at a time (the first text's on a tie)
                keep_a, keep_b = _longest_first_words(len(a), len(b), budget)
                a, b = keep(a, keep_a, side), keep(b, keep_b, side)
        tokens, segments = get_tokens_and_segments(a, b)
        return self.vocab[tokens], segments, truncated

    def windows(self, text: str, overlap: int) -> list:
        """(ids, segments) of the overlapping windows of max_len tokens that cover ``text``,
        each as <cls> words <sep>."""
        return split_windows(self.vocab[["<cls>"]], self.vocab[self.words(text)],
                             self.vocab[["<sep>"]], self.max_len, overlap)

    def encode_ids(self, rows: list, truncation: str = "warn", side: str | None = None,
                   count: TruncationCount | None = None) -> list:
        """(ids, segments) of token-id sequences given without special tokens, each as
        <cls> ids <sep> (see wrap_ids)."""
        return wrap_ids(rows, self.vocab[["<cls>"]], self.vocab[["<sep>"]], self.max_len,
                        truncation, check_side(side), count)

    def encode_all(self, items, truncation: str = "warn", start: int = 0,
                   side: str | None = None, count: TruncationCount | None = None):
        """Encode many; the texts that were cut counted in ``count`` (else one warning for
        all of them)."""
        check_truncation(truncation)
        side = check_side(side)
        encoded, cut = [], 0
        for i, item in enumerate(items):
            ids, segments, truncated = self.encode(item, truncation, start + i, side)
            encoded.append((ids, segments))
            cut += truncated
        warn_cut(cut, self.max_len, len(encoded), count)
        return encoded


def _longest_first_words(n_a: int, n_b: int, budget: int) -> tuple[int, int]:
    """The words a pair keeps when one word at a time is removed from its longer text (the
    first on a tie) until it fits ``budget``: in closed form, so that a long pair costs no
    more than its length."""
    excess = n_a + n_b - budget
    if excess <= 0:
        return n_a, n_b
    gap = abs(n_a - n_b)
    if gap >= excess:
        return (n_a - excess, n_b) if n_a >= n_b else (n_a, n_b - excess)
    level, rest = min(n_a, n_b), excess - gap
    return level - (rest + 1) // 2, level - rest // 2
