"""The d2l BERT's format (Dive into Deep Learning 0.17.6, ``BERTModel``'s state_dict): its
config read off an eager model, the shape of every tensor it has, and the map from its keys to
the engine's packed weights. The engine packs an eager model through it (Engine.from_model),
pybert's checkpoints are saved and read in it (pybert.checkpoint.native)."""

from __future__ import annotations

import re

import torch
from torch import nn

from .config import BertConfig
from .engine.weights import WeightMap, pack_weights

__all__ = ["config_from_model", "state_dict_problems", "expected_state_shapes",
           "D2L_WEIGHT_MAP", "pack_d2l_state_dict"]


def config_from_model(net: nn.Module) -> BertConfig:
    """Read the sizes of a d2l ``BERTModel`` (ours or the book's) off its modules.

    Raises ValueError for a model the engine cannot run exactly: projections whose sizes differ
    from num_hiddens, LayerNorms with different eps, or a missing part.
    """
    try:
        encoder = net.encoder
        blocks = list(encoder.blks)
        vocab_size, h = encoder.token_embedding.weight.shape
        max_len = encoder.pos_embedding.shape[1]
        first = blocks[0]
        num_heads = int(first.attention.num_heads)
        ffn = first.ffn.dense1.out_features
        dropout = float(first.addnorm1.dropout.p)
    except (AttributeError, IndexError) as err:
        raise ValueError(f"not a d2l-style BERTModel (expected encoder.blks, token_embedding, "
                         f"pos_embedding and attention.num_heads): {err}") from None
    eps_values = {m.eps for m in net.modules() if isinstance(m, nn.LayerNorm)}
    if len(eps_values) != 1:
        raise ValueError(f"every LayerNorm must share one eps, got {sorted(eps_values)}")
    config = BertConfig(vocab_size=int(vocab_size), num_hiddens=int(h), ffn_num_hiddens=int(ffn),
                        num_heads=num_heads, num_layers=len(blocks), max_len=int(max_len),
                        dropout=dropout, layer_norm_eps=float(eps_values.pop()))
    problems = state_dict_problems(net.state_dict(), config)
    if problems:
        raise ValueError("the model's weights do not fit a d2l BERT with num_hiddens="
                         f"{h} everywhere: " + "; ".join(problems[:5]))
    return config


def state_dict_problems(state_dict: dict, config: BertConfig, limit: int = 8) -> list[str]:
    """What keeps ``state_dict`` (tensors, or shapes, by key) from being a d2l BERT of
    ``config``: unexpected, missing and misshapen tensors (empty when it fits; at most
    ``limit`` missing keys are named).

    The file's own keys are checked first, one by one, so that a config that claims a huge
    model is refused in time proportional to the weights at hand, not to the claim."""
    problems, expected_here = [], 0
    for key, value in state_dict.items():
        shape = _expected_state_shape(key, config)
        if shape is None:
            problems.append(f"unexpected {key}")
            continue
        expected_here += 1
        actual = tuple(getattr(value, "shape", value))
        if actual != shape:
            problems.append(f"{key} has shape {actual}, expected {shape}")
    if expected_here != _state_dict_size(config):
        missing = []
        for key in _expected_state_keys(config):
            if key not in state_dict:
                missing.append(f"missing {key}")
                if len(missing) == limit:
                    break
        problems = missing + problems
    return problems


_LAYER_SHAPES = {  # the d2l key of a block's tensor -> its shape in (h, f)
    **{f"attention.W_{n}.{kind}": (("h", "h") if kind == "weight" else ("h",))
       for n in "qkvo" for kind in ("weight", "bias")},
    "addnorm1.ln.weight": ("h",), "addnorm1.ln.bias": ("h",),
    "ffn.dense1.weight": ("f", "h"), "ffn.dense1.bias": ("f",),
    "ffn.dense2.weight": ("h", "f"), "ffn.dense2.bias": ("h",),
    "addnorm2.ln.weight": ("h",), "addnorm2.ln.bias": ("h",),
}
_OTHER_SHAPES = {
    "encoder.pos_embedding": ("1", "max_len", "h"),
    "encoder.token_embedding.weight": ("v", "h"),
    "encoder.segment_embedding.weight": ("2", "h"),
    "hidden.0.weight": ("h", "h"), "hidden.0.bias": ("h",),
    "mlm.mlp.0.weight": ("h", "h"), "mlm.mlp.0.bias": ("h",),
    "mlm.mlp.2.weight": ("h",), "mlm.mlp.2.bias": ("h",),
    "mlm.mlp.3.weight": ("v", "h"), "mlm.mlp.3.bias": ("v",),
    "nsp.output.weight": ("2", "h"), "nsp.output.bias": ("2",),
}
_LAYER_KEY = re.compile(r"encoder\.blks\.(0|[1-9][0-9]{0,8})\.(.+)")


def _dims(config: BertConfig) -> dict[str, int]:
    return {"h": config.num_hiddens, "f": config.ffn_num_hiddens, "v": config.vocab_size,
            "max_len": config.max_len, "1": 1, "2": 2}


def _expected_state_shape(key: str, config: BertConfig) -> tuple[int, ...] | None:
    """The shape of d2l state_dict key ``key`` in a model of ``config``, or None if such a
    model has no such key."""
    symbols = _OTHER_SHAPES.get(key)
    match = _LAYER_KEY.fullmatch(key) if symbols is None else None
    if match is not None and int(match.group(1)) < config.num_layers:
        symbols = _LAYER_SHAPES.get(match.group(2))
    if symbols is None:
        return None
    dims = _dims(config)
    return tuple(dims[s] for s in symbols)


def _state_dict_size(config: BertConfig) -> int:
    return len(_OTHER_SHAPES) + len(_LAYER_SHAPES) * config.num_layers


def _expected_state_keys(config: BertConfig):
    yield from list(_OTHER_SHAPES)[:3]
    for i in range(config.num_layers):
        for name in _LAYER_SHAPES:
            yield f"encoder.blks.{i}.{name}"
    yield from list(_OTHER_SHAPES)[3:]


def expected_state_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """The d2l state_dict keys of a model of this config, with their shapes (in the order of
    the book's ``state_dict``)."""
    return {key: _expected_state_shape(key, config) for key in _expected_state_keys(config)}


_D2L_BLOCK = "encoder.blks.{i}."
D2L_WEIGHT_MAP = WeightMap(
    name="d2l",
    layer_key=re.compile(r"encoder\.blks\.(\d+)\..+"),
    sources={
        "token_embedding": "encoder.token_embedding.weight",
        "segment_embedding": "encoder.segment_embedding.weight",
        "pos_embedding": "encoder.pos_embedding",
        "pooler_weight": "hidden.0.weight",
        "pooler_bias": "hidden.0.bias",
        "nsp_weight": "nsp.output.weight",
        "nsp_bias": "nsp.output.bias",
        "mlm_dense_weight": "mlm.mlp.0.weight",
        "mlm_dense_bias": "mlm.mlp.0.bias",
        "mlm_ln_weight": "mlm.mlp.2.weight",
        "mlm_ln_bias": "mlm.mlp.2.bias",
        "mlm_decoder_weight": "mlm.mlp.3.weight",
        "mlm_decoder_bias": "mlm.mlp.3.bias",
        "layers.{i}.qkv_weight": tuple(_D2L_BLOCK + f"attention.W_{n}.weight" for n in "qkv"),
        "layers.{i}.qkv_bias": tuple(_D2L_BLOCK + f"attention.W_{n}.bias" for n in "qkv"),
        "layers.{i}.out_weight": _D2L_BLOCK + "attention.W_o.weight",
        "layers.{i}.out_bias": _D2L_BLOCK + "attention.W_o.bias",
        "layers.{i}.ln1_weight": _D2L_BLOCK + "addnorm1.ln.weight",
        "layers.{i}.ln1_bias": _D2L_BLOCK + "addnorm1.ln.bias",
        "layers.{i}.ffn1_weight": _D2L_BLOCK + "ffn.dense1.weight",
        "layers.{i}.ffn1_bias": _D2L_BLOCK + "ffn.dense1.bias",
        "layers.{i}.ffn2_weight": _D2L_BLOCK + "ffn.dense2.weight",
        "layers.{i}.ffn2_bias": _D2L_BLOCK + "ffn.dense2.bias",
        "layers.{i}.ln2_weight": _D2L_BLOCK + "addnorm2.ln.weight",
        "layers.{i}.ln2_bias": _D2L_BLOCK + "addnorm2.ln.bias",
    },
)


def pack_d2l_state_dict(state_dict: dict, config: BertConfig) -> dict[str, torch.Tensor]:
    """Map d2l state_dict keys to the engine's packed weights (W_q, W_k, W_v stacked)."""
    problems = state_dict_problems(state_dict, config)
    if problems:
        raise ValueError("state_dict does not match the config: " + "; ".join(problems[:5]))
    if config.embedding_layer_norm:
        raise ValueError("embedding_layer_norm is true, but d2l's BERT has no embedding "
                         "LayerNorm (and its state_dict no weights for one)")
    return pack_weights(state_dict, D2L_WEIGHT_MAP, config)
