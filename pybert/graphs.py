"""CUDA graphs of the engine's forward: capture once per shape bucket, replay after.

A batch of B sequences padded to S runs in the graph of its bucket (B rounded up to a power of
two, S up to a multiple of 32): the graph computes a fixed number of rows (B_cap x S_cap), of
which the real tokens are the first cu_seqlens[B]; the spare rows are zeros and the spare
sequence slots are empty (see the runner's spare capacity). One replay is one launch from the
host, which is what small batches need: without a graph, a 12-layer forward is ~100 kernel
launches. Graphs are captured lazily (or ahead with Engine.capture), kept in a bounded LRU.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

__all__ = ["GraphCache"]

SEQ_BUCKET = 32
MAX_BATCH_BUCKET = 256


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


class _Captured:
    """One bucket's graph, its static inputs (device + pinned staging) and static outputs."""

    def __init__(self, native, device, batch: int, seq_len: int, with_nsp: bool):
        self.batch, self.seq_len = batch, seq_len
        long = dict(dtype=torch.int64)
        self.host_tokens = torch.zeros((batch, seq_len), pin_memory=True, **long)
        self.host_segments = torch.zeros((batch, seq_len), pin_memory=True, **long)
        self.host_cu = torch.zeros(batch + 1, dtype=torch.int32, pin_memory=True)
        self.tokens = torch.zeros((batch, seq_len), device=device, **long)
        self.segments = torch.zeros((batch, seq_len), device=device, **long)
        # Capture with every slot full, so every kernel sees its largest work.
        self.cu = torch.arange(0, (batch + 1) * seq_len, seq_len, device=device,
                               dtype=torch.int32)
        self.copied = torch.cuda.Event()   # the staging buffers were read
        self.finished = torch.cuda.Event()  # the static outputs were read
        args = dict(tokens=self.tokens, segments=self.segments, cu_seqlens=self.cu,
                    total_tokens=batch * seq_len, max_seqlen=seq_len, pred_positions=None,
                    with_encoded=True, with_nsp=with_nsp)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: GEMM plans and kernel attributes, uncaptured
            native.forward(**args)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.encoded, _, self.nsp = native.forward(**args)

    def run(self, tokens, segments, lengths):
        batch, seq_len = tokens.shape
        self.copied.synchronize()  # the previous call's copies have left the staging buffers
        # A previous call on another stream must have read the outputs before this replay
        # writes them again.
        torch.cuda.current_stream().wait_event(self.finished)
        self.host_tokens.zero_()
        self.host_segments.zero_()
        self.host_tokens[:batch, :seq_len] = tokens
        self.host_segments[:batch, :seq_len] = segments
        self.host_cu.zero_()
        torch.cumsum(lengths, 0, out=self.host_cu[1:batch + 1])
        self.host_cu[batch + 1:] = self.host_cu[batch]
        self.tokens.copy_(self.host_tokens, non_blocking=True)
        self.segments.copy_(self.host_segments, non_blocking=True)
        self.cu.copy_(self.host_cu, non_blocking=True)
        self.copied.record()
        self.graph.replay()
        encoded = self.encoded[:batch, :seq_len].clone()
        nsp = None if self.nsp is None else self.nsp[:batch].clone()
        self.finished.record()
        return encoded, nsp


class GraphCache:
    """The captured forwards of one engine, at most ``max_graphs`` of them (least recently used
    first out; each graph holds its own memory pool, freed with it)."""

    def __init__(self, native, device, max_len: int, max_graphs: int = 16):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.native, self.device, self.max_len, self.max_graphs = native, device, max_len, \
            max_graphs
        self.graphs: OrderedDict = OrderedDict()
        # A graph's static buffers serve one call at a time.
        self.lock = threading.Lock()

    def bucket(self, batch: int, seq_len: int) -> tuple[int, int] | None:
        """(batch, seq_len) of the bucket for this shape, or None if it has none (too big)."""
        batch_cap = 1 << max(0, batch - 1).bit_length()
        if batch_cap > MAX_BATCH_BUCKET:
            return None
        return batch_cap, min(_round_up(seq_len, SEQ_BUCKET), self.max_len)

    def capture(self, batch: int, seq_len: int, with_nsp: bool) -> None:
        bucket = self.bucket(batch, seq_len)
        if bucket is None:
            raise ValueError(f"batch {batch} is above the largest graph bucket "
                             f"({MAX_BATCH_BUCKET})")
        with self.lock:
            self._get(bucket, with_nsp)

    def _get(self, bucket, with_nsp: bool) -> _Captured:
        key = (*bucket, with_nsp)
        if key in self.graphs:
            self.graphs.move_to_end(key)
        else:
            while len(self.graphs) >= self.max_graphs:
                self.graphs.popitem(last=False)
            self.graphs[key] = _Captured(self.native, self.device, *bucket, with_nsp)
        return self.graphs[key]

    def run(self, tokens, segments, lengths, with_nsp: bool):
        """(encoded (B, S, H), nsp (B, 2) or None) for host tensors tokens, segments (B, S) and
        lengths (B,), or None when the shape has no bucket."""
        bucket = self.bucket(*tokens.shape)
        if bucket is None:
            return None
        with self.lock:
            return self._get(bucket, with_nsp).run(tokens, segments, lengths)
