"""Vocab: the book's word-level vocabulary (``<unk>`` = 0, then reserved tokens, then words by
descending frequency, ties in first-seen order)."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["Vocab", "BERT_RESERVED_TOKENS"]

BERT_RESERVED_TOKENS = ("<pad>", "<mask>", "<cls>", "<sep>")


def _flatten(tokens) -> Iterable[str]:
    for item in tokens:
        if isinstance(item, str):
            yield item
        else:
            yield from item


class Vocab:
    """Maps tokens to ids and back. ``vocab[token]`` is the token's id or ``<unk>``'s."""

    def __init__(self, tokens=(), min_freq: int = 0, reserved_tokens: Sequence[str] = ()):
        counter = collections.Counter(_flatten(tokens))
        # sorted() is stable and Counter keeps first-seen order: equal counts keep that order.
        self.token_freqs = sorted(counter.items(), key=lambda item: item[1], reverse=True)
        self.idx_to_token = ["<unk>", *reserved_tokens]
        self.token_to_idx = {token: i for i, token in enumerate(self.idx_to_token)}
        if len(self.token_to_idx) != len(self.idx_to_token):
            raise ValueError(f"reserved tokens repeat or include '<unk>': {list(reserved_tokens)}")
        for token, freq in self.token_freqs:
            if freq < min_freq:
                break
            if token not in self.token_to_idx:
                self.token_to_idx[token] = len(self.idx_to_token)
                self.idx_to_token.append(token)

    @classmethod
    def from_tokens(cls, idx_to_token: Sequence[str]) -> "Vocab":
        """A vocabulary with exactly these tokens at these ids (``<unk>`` must be id 0)."""
        idx_to_token = list(idx_to_token)
        if not idx_to_token or idx_to_token[0] != "<unk>":
            raise ValueError("a vocabulary must start with '<unk>' at id 0")
        if len(set(idx_to_token)) != len(idx_to_token):
            seen, dups = set(), []
            for t in idx_to_token:
                (dups.append(t) if t in seen else seen.add(t))
            raise ValueError(f"a vocabulary repeats tokens: {dups[:5]}")
        vocab = cls.__new__(cls)
        vocab.token_freqs = []
        vocab.idx_to_token = idx_to_token
        vocab.token_to_idx = {t: i for i, t in enumerate(idx_to_token)}
        return vocab

    def __len__(self) -> int:
        return len(self.idx_to_token)

    @property
    def unk(self) -> int:
        return 0

    def __getitem__(self, tokens):
        if isinstance(tokens, str):
            return self.token_to_idx.get(tokens, self.unk)
        return [self[t] for t in tokens]

    def to_tokens(self, indices):
        if isinstance(indices, int):
            return self.idx_to_token[indices]
        return [self.idx_to_token[int(i)] for i in indices]

    def save(self, path: str | Path) -> None:
        """One token per line, in id order."""
        bad = [t for t in self.idx_to_token if not t or any(c.isspace() for c in t)]
        if bad:
            raise ValueError(f"tokens with white space cannot be saved one per line: {bad[:5]}")
        Path(path).write_text("\n".join(self.idx_to_token) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        return cls.from_text(Path(path).read_text(encoding="utf-8"), str(path))

    @classmethod
    def from_text(cls, text: str, where: str = "vocabulary") -> "Vocab":
        """The vocabulary of a vocab.txt's text: one token per line, in id order."""
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if any(not t or t != t.strip() for t in lines):
            raise ValueError(f"{where}: an empty line, or a token with white space around it, "
                             "in the vocabulary file")
        return cls.from_tokens(lines)
