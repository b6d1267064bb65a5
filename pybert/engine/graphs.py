"""CUDA graphs of the engine's forward: captured once per size bucket, replayed after.

A forward of BERT-base is ~100 kernel launches; for a small batch the host takes longer to
launch them than the GPU to run them, and one graph replay is one launch. Measured on an H100
(BERT-base, fp16; benchmarks/RESULTS.md) graphs were faster at every fixed size up to 32 x 512,
by 16% at 8 x 128 and 2% at 32 x 512. A call of more than ``max_tokens`` (16,384) real tokens
runs without a graph: there the gain is gone, a bucket's spare rows would cost more, and each
graph holds its activations' memory.

A bucket is keyed by what the kernels see, not by the padded batch: the rows computed (the
real tokens, rounded up to a few steps per power of two), the sequence slots (a power of two)
and the longest sequence (a multiple of 32); plus the number of MLM positions, whether the
inputs are packed and whether NSP runs. A ragged batch costs its real tokens, not B x S. The
real tokens fill the first rows and slots; the spare rows and empty slots are computed on and
never returned (see the runner's spare capacity). Graphs are captured at first use (or ahead,
``Engine.capture``) and kept in a bounded LRU; each holds its own memory pool, freed with it.

Calls from several threads or streams stay correct: one lock orders the enqueueing, and each
graph's static buffers are refilled only after the previous replay's outputs were copied out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

import torch

from .inputs import byte_views, layout_bytes

__all__ = ["GraphCache", "GraphKey"]

SEQ_STEP = 32            # the longest sequence is rounded up to a multiple of this
MIN_ROWS = 64            # the smallest row bucket
ROW_STEPS_PER_OCTAVE = 8  # row buckets between two powers of two (at most 1/8 spare rows)
MAX_GRAPH_TOKENS = 16384  # see the module's docstring


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def row_bucket(rows: int) -> int:
    """rows rounded up: to a multiple of MIN_ROWS, and to 1/8 of its power of two above."""
    step = max(MIN_ROWS, (1 << (max(rows, 1).bit_length() - 1)) // ROW_STEPS_PER_OCTAVE)
    return _round_up(max(rows, 1), step)


class GraphKey(NamedTuple):
    slots: int          # sequence slots (cu_seqlens has slots + 1 entries)
    seq_len: int        # max_seqlen the graph was captured with; padded inputs' width
    rows: int           # rows computed
    pred_positions: int  # MLM positions per sequence (0: no MLM head run)
    packed: bool        # inputs (total,) packed, or (slots, seq_len) padded
    with_nsp: bool


class _Captured:
    """One bucket's graph: its static device inputs, pinned staging for host inputs, and its
    static outputs."""

    def __init__(self, native, device, key: GraphKey):
        self.key = key
        # Normal tensors even when the first call comes under torch.inference_mode: the static
        # inputs are refilled in place by later calls, which may run outside it.
        with torch.inference_mode(False):
            self._allocate(device, key)
        args = {"tokens": self.tokens, "segments": self.segments, "cu_seqlens": self.cu,
                "total_tokens": key.rows, "max_seqlen": key.seq_len,
                "pred_positions": self.pred, "with_encoded": True, "with_nsp": key.with_nsp}
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: GEMM plans and kernel attributes, uncaptured
            native.forward(**args)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.encoded, self.mlm, self.nsp = native.forward(**args)

    def _allocate(self, device, key: GraphKey):
        # The static inputs are views into one device buffer, filled from one pinned staging
        # buffer of the same layout: a call from the host uploads them in one copy. The int64
        # parts come first, cu_seqlens (int32) last, so every view is aligned.
        shape = (key.rows,) if key.packed else (key.slots, key.seq_len)
        layout = [(torch.int64, shape), (torch.int64, shape),
                  (torch.int64, (key.slots, key.pred_positions)) if key.pred_positions else None,
                  (torch.int32, (key.slots + 1,))]
        self.staging = torch.zeros(layout_bytes(layout), dtype=torch.uint8, pin_memory=True)
        self.inputs = torch.zeros(layout_bytes(layout), dtype=torch.uint8, device=device)
        self.host = dict(zip(("tokens", "segments", "pred", "cu"),
                             byte_views(self.staging, layout)))
        self.tokens, self.segments, self.pred, self.cu = byte_views(self.inputs, layout)
        # Any valid lengths do for the capture: launches depend on the key, not on the values.
        self.cu.copy_(torch.arange(0, (key.slots + 1) * key.seq_len, key.seq_len,
                                   dtype=torch.int32).clamp_(max=key.rows))
        self.copied = torch.cuda.Event()    # the staging buffer was read
        self.finished = torch.cuda.Event()  # the static outputs were copied out
        self.finished.record()

    def run(self, batch, with_mlm: bool):
        """(encoded, mlm or None, nsp or None) of a checked PackedBatch that fits this bucket."""
        slots, total = batch.batch, batch.total_tokens
        stream = torch.cuda.current_stream()
        # The previous replay's outputs were copied out (maybe on another stream) before this
        # call refills the inputs and replays over them.
        stream.wait_event(self.finished)
        if batch.tokens.device.type == "cpu":
            self.copied.synchronize()  # the previous call's upload has left the staging
            self._stage(batch)
            self.inputs.copy_(self.staging, non_blocking=True)
            self.copied.record()
        else:  # packed inputs already on the GPU: device copies, nothing read back
            self.tokens[:total].copy_(batch.tokens)
            self.tokens[total:].zero_()
            self.segments[:total].copy_(batch.segments)
            self.segments[total:].zero_()
            self.cu[:slots + 1].copy_(batch.cu_seqlens)
            self.cu[slots + 1:].fill_(total)
        self.graph.replay()
        if self.key.packed:
            encoded = self.encoded[:total].clone()
        else:
            encoded = self.encoded[:slots, :batch.tokens.shape[1]].clone()
        mlm = self.mlm[:slots].clone() if with_mlm else None
        nsp = self.nsp[:slots].clone() if self.key.with_nsp else None
        self.finished.record()
        return encoded, mlm, nsp

    def _stage(self, batch):
        slots, total = batch.batch, batch.total_tokens
        tokens, segments = self.host["tokens"], self.host["segments"]
        if self.key.packed:
            tokens[:total] = batch.tokens
            tokens[total:] = 0
            segments[:total] = batch.segments
            segments[total:] = 0
        elif batch.tokens.shape == tokens.shape:
            tokens.copy_(batch.tokens)
            segments.copy_(batch.segments)
        else:
            width = batch.tokens.shape[1]
            tokens.zero_()
            segments.zero_()
            tokens[:slots, :width] = batch.tokens
            segments[:slots, :width] = batch.segments
        cu = self.host["cu"]
        cu[:slots + 1] = batch.cu_seqlens
        cu[slots + 1:] = total
        if self.pred is not None:
            pred = self.host["pred"]
            pred[slots:] = 0  # empty slots score position 0 of a spare row
            pred[:slots] = batch.pred_positions


class GraphCache:
    """The captured forwards of one engine, at most ``max_graphs`` of them (least recently used
    first out)."""

    def __init__(self, native, device, config, max_graphs: int = 16):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.native, self.device, self.max_len = native, device, config.max_len
        self.max_graphs = max_graphs
        self.max_tokens = MAX_GRAPH_TOKENS
        self.graphs: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def key(self, batch, with_nsp: bool) -> GraphKey | None:
        """The bucket of a checked PackedBatch, or None if it runs without a graph."""
        packed = batch.tokens.dim() == 1
        return self.key_for(batch.total_tokens, batch.batch,
                            batch.max_seqlen if packed else batch.tokens.shape[1],
                            0 if batch.pred_positions is None else batch.pred_positions.shape[1],
                            packed, with_nsp)

    def key_for(self, total: int, slots: int, width: int, positions: int, packed: bool,
                with_nsp: bool) -> GraphKey | None:
        """The bucket of `total` real tokens in `slots` sequences of at most `width`."""
        if total > self.max_tokens:
            return None
        slot_cap = 1 << max(0, slots - 1).bit_length()
        seq_len = min(_round_up(width, SEQ_STEP), self.max_len)
        # An empty slot reads row cu[slots] = total (its <cls> row), so it needs a spare row.
        rows = min(row_bucket(total + (slot_cap > slots)), slot_cap * self.max_len)
        return GraphKey(slot_cap, seq_len, rows, positions, packed, with_nsp)

    def capture(self, key: GraphKey) -> None:
        with self.lock:
            self._get(key)

    def _get(self, key: GraphKey) -> _Captured:
        if key in self.graphs:
            self.graphs.move_to_end(key)
        else:
            while len(self.graphs) >= self.max_graphs:
                self.graphs.popitem(last=False)
            self.graphs[key] = _Captured(self.native, self.device, key)
        return self.graphs[key]

    def run(self, batch, with_nsp: bool):
        """(encoded, mlm_logits or None, nsp_logits or None) of a checked PackedBatch, or None
        when it runs without a graph (too many tokens, or inside the caller's own capture)."""
        key = self.key(batch, with_nsp)
        if key is None or torch.cuda.is_current_stream_capturing():
            return None
        with self.lock:
            return self._get(key).run(batch, batch.pred_positions is not None)
