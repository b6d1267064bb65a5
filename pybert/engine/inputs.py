"""One batch of token ids, checked before the engine runs it.

Every check here is pure (it reads the inputs and the config) and raises a ValueError or
TypeError naming the argument. The result is a :class:`PackedBatch`: the engine's own copies of
the inputs (a caller that changes its tensors afterwards, from another thread, cannot change
what was checked), the prefix sums of the lengths and the sizes the launch needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..config import BertConfig

__all__ = ["PackedBatch", "padded_batch", "packed_batch", "device_packed_batch"]


@dataclass(frozen=True)
class PackedBatch:
    """A checked batch: the lengths as prefix sums (flash-attention's varlen form)."""

    tokens: torch.Tensor      # int64: (batch, seq_len) padded, or (total_tokens,) packed
    segments: torch.Tensor    # int64, the shape of tokens, each in [0, type_vocab_size)
    cu_seqlens: torch.Tensor  # int32 (batch + 1,): sequence b is rows cu[b]:cu[b + 1]
    max_seqlen: int           # the longest sequence
    total_tokens: int         # cu_seqlens[-1]
    pred_positions: torch.Tensor | None = None  # int64 (batch, P), inside each sequence

    @property
    def batch(self) -> int:
        return self.cu_seqlens.shape[0] - 1

    @property
    def padded(self) -> bool:
        return self.tokens.dim() == 2

    def to(self, device: torch.device) -> "PackedBatch":
        """The batch's tensors on ``device``. To a GPU from the host: one asynchronous copy
        from pinned memory (a copy from pageable memory makes the host wait for it, one per
        tensor), so the call returns while the GPU works."""
        if self.tokens.device == device:
            return self
        if device.type != "cuda" or self.tokens.device.type != "cpu":
            move = (lambda t: None if t is None else t.to(device, non_blocking=True))
            return replace(self, tokens=move(self.tokens), segments=move(self.segments),
                           cu_seqlens=move(self.cu_seqlens),
                           pred_positions=move(self.pred_positions))
        parts = [self.tokens, self.segments, self.pred_positions, self.cu_seqlens]
        layout = [None if t is None else (t.dtype, tuple(t.shape)) for t in parts]
        staging = torch.empty(layout_bytes(layout), dtype=torch.uint8, pin_memory=True)
        for view, t in zip(byte_views(staging, layout), parts):
            if t is not None:
                view.copy_(t)
        uploaded = staging.to(device, non_blocking=True)
        tokens, segments, pred_positions, cu_seqlens = byte_views(uploaded, layout)
        return replace(self, tokens=tokens, segments=segments, cu_seqlens=cu_seqlens,
                       pred_positions=pred_positions)


def layout_bytes(layout) -> int:
    """Bytes of the integer tensors of ``layout``, a list of (dtype, shape) or None, laid one
    after another (see byte_views)."""
    return sum(0 if part is None else math.prod(part[1]) * part[0].itemsize for part in layout)


def byte_views(buffer: torch.Tensor, layout) -> list:
    """Views of the uint8 ``buffer`` as the tensors of ``layout`` one after another (None for
    None): one buffer, so one copy moves them all between host and device. Put the int64
    parts before the int32 ones and every view stays aligned to its element size."""
    views, offset = [], 0
    for part in layout:
        if part is None:
            views.append(None)
            continue
        dtype, shape = part
        size = math.prod(shape) * dtype.itemsize
        views.append(buffer[offset:offset + size].view(dtype).view(shape))
        offset += size
    return views


def _dense(value, name: str) -> torch.Tensor:
    """value as a dense tensor: a tensor, a numpy array or nested lists of numbers."""
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.is_nested or value.is_meta:
            kind = "nested" if value.is_nested else "meta" if value.is_meta else value.layout
            raise TypeError(f"{name} must be a dense tensor with data, got a {kind} tensor")
        return value
    try:
        array = np.asarray(value)
        if array.dtype == object:
            raise TypeError("ragged or mixed values")
        return torch.as_tensor(array)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a tensor, a numpy array or a nested list of numbers, "
                        f"got {type(value).__name__}: {err}") from None


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _host_int64(value, name: str) -> torch.Tensor:
    """A private int64 host copy of integer ``value``."""
    t = _dense(value, name)
    if not _is_integer(t):
        raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")
    return t.detach().to("cpu", torch.int64, copy=True).contiguous()


def _checked_tokens(value, config: BertConfig) -> torch.Tensor:
    tokens = _host_int64(value, "tokens")
    if tokens.numel() == 0:
        raise ValueError(f"tokens must be non-empty, got shape {tuple(tokens.shape)}")
    low, high = (int(v) for v in torch.aminmax(tokens))
    if low < 0 or high >= config.vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"tokens must be ids in [0, {config.vocab_size}), found {bad}")
    return tokens


def _checked_segments(value, tokens: torch.Tensor, config: BertConfig) -> torch.Tensor:
    if value is None:
        return torch.zeros_like(tokens)
    segments = _host_int64(value, "segments")
    if tuple(segments.shape) != tuple(tokens.shape):
        raise ValueError(f"segments must have the shape of tokens {tuple(tokens.shape)}, "
                         f"got {tuple(segments.shape)}")
    low, high = (int(v) for v in torch.aminmax(segments))
    if low < 0 or high >= config.type_vocab_size:
        raise ValueError(f"segments must be {_segment_ids(config)}, found "
                         f"{low if low < 0 else high}")
    return segments


def _segment_ids(config: BertConfig) -> str:
    """The segment ids a model takes, in words: "0 or 1" for BERT's two segments."""
    n = config.type_vocab_size
    return "0" if n == 1 else "0 or 1" if n == 2 else f"ids in [0, {n})"


def _checked_valid_lens(value, batch: int, seq_len: int) -> torch.Tensor:
    """valid_lens (B,) of ints or integral floats in [1, seq_len]; None means seq_len."""
    if value is None:
        return torch.full((batch,), seq_len, dtype=torch.int64)
    lens = _dense(value, "valid_lens").detach().to("cpu", copy=True)
    if tuple(lens.shape) != (batch,):
        raise ValueError(f"valid_lens must have shape (batch={batch},), got "
                         f"{tuple(lens.shape)} (the engine takes one length per sequence)")
    if lens.is_floating_point():
        lens = lens.to(torch.float64)
        if not bool(torch.isfinite(lens).all()):
            raise ValueError("valid_lens must be finite, found NaN or infinity")
        fractional = lens != torch.round(lens)
        if bool(fractional.any()):
            raise ValueError(f"valid_lens must be whole numbers, found {lens[fractional][0]}")
    elif not _is_integer(lens):
        raise TypeError(f"valid_lens must be integers or floats, got dtype {lens.dtype}")
    low, high = (v.item() for v in torch.aminmax(lens))
    if low < 1 or high > seq_len:
        bad = low if low < 1 else high
        raise ValueError(f"valid_lens must be in [1, seq_len={seq_len}], found "
                         f"{int(bad) if math.isfinite(bad) else bad}")
    return lens.to(torch.int64)


def _prefix_sums(lengths: torch.Tensor) -> torch.Tensor:
    cu_seqlens = torch.zeros(lengths.shape[0] + 1, dtype=torch.int32)
    torch.cumsum(lengths, 0, out=cu_seqlens[1:])
    return cu_seqlens


def padded_batch(config: BertConfig, tokens, segments=None, valid_lens=None,
                 pred_positions=None) -> PackedBatch:
    """Check a padded batch (``BERTModel.forward``'s arguments): tokens (B, S) ids in
    [0, vocab_size), S <= max_len; segments (B, S) in [0, type_vocab_size) (default 0);
    valid_lens (B,) in [1, S] (default S); pred_positions (B, P) at real tokens."""
    tokens = _checked_tokens(tokens, config)
    if tokens.dim() != 2:
        raise ValueError(f"tokens must have shape (batch, seq_len), got {tuple(tokens.shape)}")
    batch, seq_len = tokens.shape
    if seq_len > config.max_len:
        raise ValueError(f"tokens has sequence length {seq_len}, longer than the model's "
                         f"max_len {config.max_len}")
    segments = _checked_segments(segments, tokens, config)
    lengths = _checked_valid_lens(valid_lens, batch, seq_len)
    return PackedBatch(tokens, segments, _prefix_sums(lengths), int(lengths.max()),
                       int(lengths.sum()), _checked_positions(pred_positions, lengths, seq_len))


def _checked_positions(value, lengths: torch.Tensor, seq_len: int | None = None):
    """pred_positions (B, P) int64, each inside its sequence (< lengths[b]), or None; in a
    padded batch (``seq_len``), a position past a sequence's end is a padded one."""
    if value is None:
        return None
    positions = _host_int64(value, "pred_positions")
    batch = lengths.shape[0]
    if positions.dim() != 2 or positions.shape[0] != batch:
        raise ValueError(f"pred_positions must have shape (batch={batch}, "
                         f"num_pred_positions), got {tuple(positions.shape)}")
    if not positions.numel():
        return positions
    low, high = int(positions.min()), int(positions.max())
    if seq_len is not None and (low < 0 or high >= seq_len):
        raise ValueError(f"pred_positions must be in [0, seq_len={seq_len}), found {low}..{high}")
    if low < 0:
        raise ValueError(f"pred_positions must be >= 0, found {low}")
    beyond = positions >= lengths[:, None]
    if bool(beyond.any()):
        b, j = (int(i) for i in beyond.nonzero()[0])
        where = f"a padded position (valid_lens[{b}] = {int(lengths[b])})" if seq_len is not None \
            else f"past the end of sequence {b} (length {int(lengths[b])})"
        raise ValueError(f"pred_positions[{b}, {j}] = {int(positions[b, j])} is {where}; "
                         "predictions are only defined at real tokens")
    return positions


def packed_batch(config: BertConfig, tokens, cu_seqlens, segments=None,
                 max_seqlen=None, pred_positions=None) -> PackedBatch:
    """Check a packed batch (flash-attention's varlen form): tokens (total_tokens,) holding
    the sequences one after another, sequence b at ``tokens[cu_seqlens[b]:cu_seqlens[b + 1]]``;
    segments of the shape of tokens; max_seqlen, if given, bounds the longest sequence;
    pred_positions (B, P), if given, positions inside each sequence (0 is its first token)."""
    tokens = _checked_tokens(tokens, config)
    if tokens.dim() != 1:
        raise ValueError(f"packed tokens must have shape (total_tokens,), got "
                         f"{tuple(tokens.shape)}")
    segments = _checked_segments(segments, tokens, config)
    cu = _host_int64(cu_seqlens, "cu_seqlens")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"cu_seqlens must have shape (batch + 1,) with batch >= 1, got "
                         f"{tuple(cu.shape)}")
    if int(cu[0]) != 0 or int(cu[-1]) != tokens.numel():
        raise ValueError(f"cu_seqlens must run from 0 to len(tokens) = {tokens.numel()}, "
                         f"got {int(cu[0])}..{int(cu[-1])}")
    lengths = cu[1:] - cu[:-1]
    if int(lengths.min()) < 1 or int(lengths.max()) > config.max_len:
        raise ValueError(f"every sequence length (cu_seqlens[b+1] - cu_seqlens[b]) must be in "
                         f"[1, max_len={config.max_len}], found {int(lengths.min())}.."
                         f"{int(lengths.max())}")
    longest = int(lengths.max())
    if max_seqlen is not None:
        if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, (int, np.integer)):
            raise TypeError(f"max_seqlen must be an int, got {type(max_seqlen).__name__}")
        if not longest <= int(max_seqlen) <= config.max_len:
            raise ValueError(f"max_seqlen {max_seqlen} must be in [{longest} (the longest "
                             f"sequence), max_len={config.max_len}]")
    return PackedBatch(tokens, segments, cu.to(torch.int32), longest, tokens.numel(),
                       _checked_positions(pred_positions, lengths))


def device_packed_batch(config: BertConfig, tokens: torch.Tensor, cu_seqlens: torch.Tensor,
                        segments: torch.Tensor | None, max_seqlen: int,
                        validate: bool = True) -> PackedBatch:
    """A packed batch whose tensors are already on the engine's GPU, checked there: the values
    are reduced on the device and read back in one small copy (``validate=False`` skips even
    that, for callers who vouch for their inputs, e.g. inside their own CUDA graph; ids out of
    range are then undefined behaviour). The engine runs on its own device copies."""
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, (int, np.integer)):
        raise TypeError("max_seqlen must be given as an int for inputs on the GPU (reading it "
                        "from cu_seqlens would wait for the device)")
    if not 1 <= int(max_seqlen) <= config.max_len:
        raise ValueError(f"max_seqlen {max_seqlen} must be in [1, max_len={config.max_len}]")
    for name, t in (("tokens", tokens), ("cu_seqlens", cu_seqlens), ("segments", segments)):
        if t is None:
            continue
        _dense(t, name)
        if not _is_integer(t):
            raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{name} must have one dimension, got shape {tuple(t.shape)}")
        if t.device != tokens.device:
            raise ValueError(f"{name} is on {t.device}, tokens on {tokens.device}")
    if tokens.numel() == 0 or cu_seqlens.numel() < 2:
        raise ValueError(f"tokens must be non-empty and cu_seqlens must have batch + 1 >= 2 "
                         f"entries, got {tokens.numel()} and {cu_seqlens.numel()}")
    if segments is not None and segments.shape != tokens.shape:
        raise ValueError(f"segments must have the shape of tokens {tuple(tokens.shape)}, got "
                         f"{tuple(segments.shape)}")
    tokens = tokens.detach().to(torch.int64, copy=True)
    segments = torch.zeros_like(tokens) if segments is None else \
        segments.detach().to(torch.int64, copy=True)
    cu = cu_seqlens.detach().to(torch.int32, copy=True)
    if validate:
        lengths = (cu[1:] - cu[:-1]).to(torch.int64)
        stats = torch.stack([tokens.min(), tokens.max(), segments.min(), segments.max(),
                             cu[0].to(torch.int64), cu[-1].to(torch.int64), lengths.min(),
                             lengths.max()]).cpu().tolist()
        low, high, seg_low, seg_high, first, last, shortest, longest = stats
        if low < 0 or high >= config.vocab_size:
            raise ValueError(f"tokens must be ids in [0, {config.vocab_size}), found "
                             f"{low if low < 0 else high}")
        if seg_low < 0 or seg_high >= config.type_vocab_size:
            bad = seg_low if seg_low < 0 else seg_high
            raise ValueError(f"segments must be {_segment_ids(config)}, found {bad}")
        if first != 0 or last != tokens.numel():
            raise ValueError(f"cu_seqlens must run from 0 to len(tokens) = {tokens.numel()}, "
                             f"got {first}..{last}")
        if shortest < 1 or longest > int(max_seqlen):
            raise ValueError(f"every sequence length must be in [1, max_seqlen={max_seqlen}], "
                             f"found {shortest}..{longest}")
    return PackedBatch(tokens, segments, cu, int(max_seqlen), tokens.numel())
