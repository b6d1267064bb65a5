"""Truncation on token lists, linear in the input: what the tokenizers library computes for an
over-long text or pair, without its overflow pieces (for a pair it builds every combination of
both sides' pieces: two 64 KiB texts took a server past 8 GiB).

``TooLong`` is the error of a text over max_len under truncation="error" (a server answers
413 for it, 422 for the other ValueErrors of a text)."""

from __future__ import annotations

__all__ = ["TooLong", "longest_first", "keep", "Template"]


class TooLong(ValueError):
    """A text or pair longer than max_len tokens, and truncation="error"."""


def longest_first(n_a: int, n_b: int, room: int) -> tuple[int, int]:
    """The tokens a pair keeps of sides of ``n_a`` and ``n_b`` tokens in ``room`` tokens, as the
    tokenizers library's LongestFirst strategy decides: nothing cut when they fit; else the
    shorter side whole and the longer cut to the rest, when the shorter takes at most half;
    else half each, the odd token to the longer side (to the second on a tie)."""
    if n_a + n_b <= room:
        return n_a, n_b
    short = min(n_a, n_b)
    long_keep = short if short > room else max(short, room - short)
    short_keep = short
    if short_keep + long_keep > room:
        short_keep = room // 2
        long_keep = short_keep + room % 2
    return (long_keep, short_keep) if n_a > n_b else (short_keep, long_keep)


def keep(ids: list, count: int, side: str) -> list:
    """The ``count`` ids kept of ``ids`` when cutting from ``side`` ("right": the first ones)."""
    if len(ids) <= count:
        return ids
    return ids[:count] if side == "right" else ids[len(ids) - count:]


class Template:
    """The special tokens a tokenizer's post-processor puts around one text or a pair, read
    off a probe encoding (``sequence_ids`` None at a special token, 0 or 1 at a side's), and
    applied to token lists: the ids and token types the post-processor would give."""

    def __init__(self, ids: list, types: list, sequence_ids: list):
        self.parts: list[tuple[list, list] | int] = []  # (special ids, types) or a side's index
        self.side_types: dict[int, int] = {}
        for token, kind, side in zip(ids, types, sequence_ids):
            if side is None:
                if not self.parts or isinstance(self.parts[-1], int):
                    self.parts.append(([], []))
                self.parts[-1][0].append(token)
                self.parts[-1][1].append(kind)
            elif not self.parts or self.parts[-1] != side:
                self.parts.append(side)
                self.side_types[side] = kind
        self.special = sum(len(p[0]) for p in self.parts if not isinstance(p, int))

    @property
    def sides(self) -> int:
        return len(self.side_types)

    def apply(self, *sides: list) -> tuple[list, list]:
        """(ids, token types) of the sides' ids with the special tokens around them."""
        ids, types = [], []
        for part in self.parts:
            if isinstance(part, int):
                ids += sides[part]
                types += [self.side_types[part]] * len(sides[part])
            else:
                ids += part[0]
                types += part[1]
        return ids, types
