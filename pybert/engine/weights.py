"""The engine's packed weights, and how each checkpoint format's tensors map onto them.

The layout itself (names, parts, shapes) is defined once, in C++ (``csrc/bert/weights.h``), and
read here through ``pybert._C.weight_shapes``. A checkpoint format is only a table saying which
of its tensors make each packed weight: one tensor, several concatenated along the first
dimension (Q, K and V into ``qkv_weight``), the first present of alternatives (a tied
decoder; an older on-disk layout), or a tensor whose halves trade places (a fused gated FFN
stored gate-last). Shapes are checked exactly; only leading dimensions of size 1 may be dropped
(d2l's ``pos_embedding`` is (1, max_len, H)). Biases are optional one by one: a format without
a source for one, or a file without its tensor, leaves it out (it adds nothing). The rotary
cos/sin tables are not read from a file but computed from the config, as the Hugging Face
models compute them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Union

import torch

from .. import _C
from ..config import BertConfig

__all__ = ["weight_shapes", "WeightMap", "pack_weights", "LAYER",
           "SwapHalves", "rotary_tables"]


@dataclass(frozen=True)
class SwapHalves:
    """A source whose tensor's two halves along dim 0 trade places: a fused gated FFN stored
    as [gate | activated] where the engine takes [activated | gate]."""

    key: str


# A source: a key, a tuple of keys concatenated along dim 0, a list of alternatives (each a key
# or a tuple), or SwapHalves.
Source = Union[str, tuple, list, SwapHalves]
LAYER = "{i}"  # stands for the layer index in the keys of per-layer sources


def weight_shapes(config: BertConfig) -> dict[str, tuple[tuple[int, ...], str, bool]]:
    """{name: (shape, part, optional)} of the engine's packed weights for ``config``."""
    return _C.weight_shapes(config.native())


def rotary_tables(config: BertConfig) -> dict[str, torch.Tensor]:
    """The cos and sin tables of rotary positions, (positions, head_dim / 2) each, computed as
    Hugging Face's rotary embeddings compute them (float32 frequencies and angles), so that the
    engine rotates by exactly their angles; the windowed layers' own when their base differs."""
    def tables(base: float, ntk: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        d = config.head_dim
        inv_freq = 1.0 / ((base * ntk) ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        if ntk != 1.0:  # GTE's fixed NTK scaling (pybert.checkpoint.families.gte)
            inv_freq = inv_freq / ntk ** (2 / d)
        positions = torch.arange(config.max_len + config.position_offset).float()
        angles = positions[:, None] * inv_freq[None, :]
        return angles.cos(), angles.sin()

    if not config.rotary_base:
        return {}
    cos, sin = tables(config.rotary_base, config.rotary_ntk_factor)
    out = {"rotary_cos": cos, "rotary_sin": sin}
    local = config.local_rotary_base
    if config.local_window and local and local != config.rotary_base:
        out["local_rotary_cos"], out["local_rotary_sin"] = tables(local)
    return out


@dataclass(frozen=True)
class WeightMap:
    """How one checkpoint format's tensors make the packed weights.

    ``sources`` maps each packed name (per-layer ones as ``layers.{i}.<name>``) to its source;
    ``layer_key`` matches the format's per-layer keys, group 1 being the layer index;
    ``part_marker`` names, for an optional part, the key whose presence means the part is there
    (by default, any of the part's keys). A part with no sources is not in the format."""

    name: str
    sources: dict[str, Source]
    layer_key: re.Pattern
    part_marker: dict[str, str] = field(default_factory=dict)
    rename: Callable[[str], str] = str  # the format's key spelling -> the one in sources


class WeightsError(ValueError):
    """A state dict that does not make the engine's weights for a config."""


def _keys_of(source: Source) -> list[str]:
    if isinstance(source, SwapHalves):
        return [source.key]
    if isinstance(source, list):
        return [k for alternative in source for k in _keys_of(alternative)]
    return [source] if isinstance(source, str) else list(source)


def _layer_count(state: dict, fmt: WeightMap) -> int:
    indices = {int(m.group(1)) for m in map(fmt.layer_key.fullmatch, state) if m is not None}
    return max(indices) + 1 if indices else 0


def _resolve(source: Source, state: dict, layer: int | None) -> tuple[list[torch.Tensor], list]:
    """(tensors, keys) a source takes from ``state``; keys that are missing raise KeyError."""
    def key_of(template: str) -> str:
        return template.replace(LAYER, str(layer)) if layer is not None else template

    if isinstance(source, list):  # alternatives
        for alternative in source:
            keys = [key_of(t) for t in _keys_of(alternative)]
            if all(k in state for k in keys):
                return _resolve(alternative, state, layer)
        raise KeyError(" or ".join(key_of(_keys_of(a)[0]) for a in source))
    keys = [key_of(t) for t in _keys_of(source)]
    missing = [k for k in keys if k not in state]
    if missing:
        raise KeyError(missing[0])
    if isinstance(source, SwapHalves):
        fused = state[keys[0]]
        if fused.dim() < 1 or fused.shape[0] % 2:
            raise KeyError(keys[0])  # reported as unusable below
        first, second = fused.chunk(2, dim=0)
        return [torch.cat([second, first])], keys
    return [state[k] for k in keys], keys


def _shaped(tensors: list[torch.Tensor], keys: list[str], shape: tuple[int, ...],
            where: str) -> torch.Tensor:
    rows = shape[0] // len(tensors)
    part_shape = (rows, *shape[1:])
    for key, t in zip(keys, tensors):
        actual = tuple(t.shape)
        while len(actual) > len(part_shape) and actual[0] == 1:
            actual = actual[1:]
        if actual != part_shape or rows * len(tensors) != shape[0]:
            raise WeightsError(f"{where}: {key} has shape {tuple(t.shape)}, expected "
                               f"{part_shape}")
    tensors = [t.reshape(part_shape) for t in tensors]
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def pack_weights(state: dict, fmt: WeightMap, config: BertConfig,
                 where: str = "state_dict", used: set | None = None) -> dict[str, torch.Tensor]:
    """The engine's packed weights made from ``state`` (a format's tensors by key), checked
    against the layout; the parts ``state`` lacks (optional ones) are left out. The keys read
    (as ``fmt.rename`` spells them) are added to ``used``."""
    state = {fmt.rename(k): v for k, v in state.items()}
    layers = _layer_count(state, fmt)
    # Compared before the layout is built: a config claiming a billion layers costs nothing.
    if layers != config.num_layers:
        raise WeightsError(f"{where}: the config has {config.num_layers} layers but the "
                           f"{fmt.name} weights have {layers}")
    shapes = weight_shapes(config)
    by_part: dict[str, list[str]] = {}
    for name, (_, part, _) in shapes.items():
        by_part.setdefault(part, []).append(name)
    derived = rotary_tables(config)
    packed = {}
    for part, names in by_part.items():
        required = [n for n in names if not shapes[n][2]]
        if all(n in derived for n in names):
            continue  # computed, not read
        if any(_template(n) not in fmt.sources for n in required):
            if part in ("embeddings", "layers"):
                raise WeightsError(f"the {fmt.name} format has no source for {part}")
            continue
        if part not in ("embeddings", "layers"):
            marker = fmt.part_marker.get(part)
            keys = [marker] if marker else [
                k for n in required for k in _keys_of(fmt.sources[_template(n)])]
            if not any(_key(k, 0) in state for k in keys):
                continue
        for name in names:
            layer = int(name.split(".")[1]) if name.startswith("layers.") else None
            # ln1 may be absent only from a pre-norm layer (the engine checks the same).
            optional = shapes[name][2] and not (name.endswith(".ln1_weight")
                                                and not config.pre_norm)
            source = fmt.sources.get(_template(name))
            if source is None:
                continue  # an optional weight the format never has
            try:
                tensors, keys = _resolve(source, state, layer)
            except KeyError as missing:
                if optional:
                    continue
                raise WeightsError(f"{where}: the {fmt.name} weights lack {missing.args[0]}"
                                   + ("" if part in ("embeddings", "layers") else
                                      f" (needed for the {part} part)")) from None
            packed[name] = _shaped(tensors, keys, shapes[name][0], where)
            if used is not None:
                used.update(keys)
    packed.update(derived)
    return packed


def _template(name: str) -> str:
    return re.sub(r"^layers\.\d+\.", f"layers.{LAYER}.", name)


def _key(template: str, layer: int) -> str:
    return template.replace(LAYER, str(layer))


# d2l's BERTModel: the book's state_dict keys.
