"""Tokenised texts into engine batches: grouped by length under a token budget, packed one
sequence after another (no padding is built, sent or computed), and made on a worker thread
while the engine runs the previous ones."""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..config import check_int

__all__ = ["plan_batches", "pack_batch", "window_batches", "Batch", "Chunk", "produce_batches",
           "DONE"]


def plan_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches: sorted by length (longest first), each batch holding at
    most ``batch_tokens`` padded tokens (batch size x its longest length, which bounds
    attention's cost and a head's (batch, longest) positions too); a sequence longer than the
    budget gets a batch of its own."""
    check_int(batch_tokens, "batch_tokens")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current, longest = [], [], 0
    for i in order:
        new_longest = max(longest, lengths[i])
        if current and new_longest * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def pack_batch(encoded: list, rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tokens, segments (total_tokens,) and cu_seqlens (len(rows) + 1,) of the (ids, segments)
    pairs ``encoded[r]`` of ``rows``, one sequence after another."""
    rows = list(rows)
    lengths = torch.tensor([len(encoded[r][0]) for r in rows], dtype=torch.int64)
    cu_seqlens = torch.zeros(len(rows) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=cu_seqlens[1:])
    tokens = torch.tensor([t for r in rows for t in encoded[r][0]], dtype=torch.int64)
    segments = torch.tensor([t for r in rows for t in encoded[r][1]], dtype=torch.int64)
    return tokens, segments, cu_seqlens


def window_batches(windows: list, batch_tokens: int):
    """(owners, windows) batches of at most ``batch_tokens`` padded tokens (one window at
    least) from each text's windows (an iterable each), made as they are consumed."""
    owners, batch, longest = [], [], 0
    for owner, text_windows in enumerate(windows):
        for window in text_windows:
            new_longest = max(longest, len(window[0]))
            if batch and new_longest * (len(batch) + 1) > batch_tokens:
                yield owners, batch
                owners, batch, new_longest = [], [], len(window[0])
            owners.append(owner)
            batch.append(window)
            longest = new_longest
    if batch:
        yield owners, batch


@dataclass
class Chunk:
    """A chunk of the input has been tokenised: ``size`` texts in ``batches`` batches."""

    index: int
    size: int
    batches: int


@dataclass
class Batch:
    """One batch of a chunk, packed."""

    chunk: int               # which chunk of the input
    rows: list[int]          # positions inside the chunk
    tokens: torch.Tensor     # (total_tokens,) the rows' ids one after another
    segments: torch.Tensor   # (total_tokens,)
    cu_seqlens: torch.Tensor  # (len(rows) + 1,)
    sequences: list          # the rows' (ids, segments) as tokenised (what a head task takes)


DONE = object()  # the worker's last item


def produce_batches(items: Iterator, chunk_size: int, batch_tokens: int, encode,
                    out: queue.Queue, stop: threading.Event) -> None:
    """Worker thread: tokenise chunk after chunk (``encode(texts, first row)``) and queue a
    Chunk then its Batches, then DONE (or the exception that stopped it)."""
    def put(item) -> bool:
        while not stop.is_set():  # the consumer may have gone (an error, a closed generator)
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        start = 0
        for chunk_index in itertools.count():
            chunk = list(itertools.islice(items, chunk_size))
            if not chunk:
                break
            encoded = encode(chunk, start)
            start += len(chunk)
            batches = plan_batches([len(ids) for ids, _ in encoded], batch_tokens)
            if not put(Chunk(chunk_index, len(chunk), len(batches))):
                return
            for rows in batches:
                if not put(Batch(chunk_index, rows, *pack_batch(encoded, rows),
                                 [encoded[r] for r in rows])):
                    return
        put(DONE)
    except BaseException as err:  # handed to the consumer, which raises it
        put(err)
