"""Word-level tokenisation, the book's rule: lower-case, split on white space.

Raw text (not pre-tokenised like WikiText) is first brought to WikiText's form by
``normalize_text``: punctuation split off words, so that "Hello, world." gives the same words
as WikiText's "hello , world ." and sentences end in " . ".
"""

from __future__ import annotations

import re

__all__ = ["split_words", "normalize_text", "split_sentences"]

_WORD_OR_PUNCT = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]", re.UNICODE)


def split_words(text: str) -> list[str]:
    """The book's rule: lower-case, then split on white space."""
    return text.lower().split()


def normalize_text(text: str) -> str:
    """Lower-case and put spaces around punctuation: "It's 3.5, ok." -> "it's 3 . 5 , ok ."."""
    return " ".join(_WORD_OR_PUNCT.findall(text.lower()))


def split_sentences(paragraph: str) -> list[str]:
    """The book's sentence rule for WikiText-format text: split on " . "."""
    return paragraph.strip().lower().split(" . ")
