"""GTE (gte-*-v1.5, gte-multilingual; model_type gte or Alibaba's "new"): post-norm, GeGLU
(up_gate_proj: [up, gate]), rotary positions with GTE's fixed NTK scaling, biases on all but
up/gate."""

from __future__ import annotations

import re
from pathlib import Path

from ...config import BertConfig
from ...engine.weights import LAYER, SwapHalves, WeightMap
from ..files import CheckpointError
from .common import ZERO_TOKEN_TYPES, Architecture, check_head_dim, hf_activation, \
    layer_linear, linear, make_config, mlm_sources, need, renamer, rope_theta, theta


def _gte_config(hf: dict, where: Path) -> BertConfig:
    # transformers' GteConfig (rope_parameters) or Alibaba's "new" config (rope_theta,
    # rope_scaling, a few switches of its own).
    position = hf.get("position_embedding_type", "rope")
    if position != "rope":
        raise CheckpointError(f"{where}: position_embedding_type {str(position)[:40]!r} is not "
                              "served (GTE: only 'rope')")
    for key, served in (("layer_norm_type", "layer_norm"), ("logn_attention_scale", False),
                        ("pack_qkv", True)):
        if key in hf and hf[key] != served:
            raise CheckpointError(f"{where}: {key} {str(hf[key])[:40]} is not served "
                                  f"(only {served})")
    ntk = 1.0
    if hf.get("rope_parameters") is not None:
        base = rope_theta(hf["rope_parameters"], where, "rope_parameters")
    else:
        base = theta(hf.get("rope_theta", 160000.0), where, "rope_theta")
        ntk = _gte_ntk_factor(hf.get("rope_scaling"), where)
    hidden, heads = need(hf, "hidden_size", where), need(hf, "num_attention_heads", where)
    check_head_dim(hf, where, hidden, heads)
    types = hf.get("type_vocab_size", 0)
    return make_config(where, vocab_size=need(hf, "vocab_size", where), num_hiddens=hidden,
                       ffn_num_hiddens=need(hf, "intermediate_size", where), num_heads=heads,
                       num_layers=need(hf, "num_hidden_layers", where),
                       max_len=need(hf, "max_position_embeddings", where),
                       type_vocab_size=types if isinstance(types, int) and types > 0 else 1,
                       layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                       ffn_activation=hf_activation(hf.get("hidden_act", "gelu"), where,
                                                     "hidden_act"),
                       mlm_activation="gelu", embedding_layer_norm=True, ffn_gated=True,
                       rotary_base=base, rotary_ntk_factor=ntk)


def _gte_ntk_factor(scaling, where: Path) -> float:
    """Alibaba's GTE code's rope_scaling {"type": "ntk", "factor": f} (gte-*-en-v1.5,
    gte-multilingual): fixed NTK scaling, the frequencies of base * f divided by f^(2/d) at
    every length (its NTKScalingRotaryEmbedding builds its cache for max_position_embeddings
    x f positions, which always takes the scaled branch). None: no scaling."""
    if scaling is None:
        return 1.0
    if not isinstance(scaling, dict) or scaling.get("type") != "ntk" or \
            scaling.get("mixed_b") is not None:
        raise CheckpointError(f"{where}: rope_scaling {str(scaling)[:60]} is not served (only "
                              "GTE's fixed NTK scaling, {'type': 'ntk', 'factor': f})")
    factor = scaling.get("factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or \
            not 1.0 <= factor <= 1e6:
        raise CheckpointError(f"{where}: rope_scaling factor must be a number in [1, 1e6], "
                              f"got {str(factor)[:40]!r}")
    return float(factor)


_GTE = f"encoder.layer.{LAYER}."
_GTE_NEW = f"layers.{LAYER}."
FAMILY = Architecture(
    name="GTE", model_types=("gte", "new"), token_types=False, zero_token_types=True,
    read_config=_gte_config, classifier=(),
    weight_map=WeightMap(
        name="Hugging Face GTE", layer_key=re.compile(r"(?:encoder\.layer|layers)\.(\d+)\..+"),
        # Alibaba's code saves its encoder under "new.", transformers' GteForMaskedLM under
        # "gte."; the MLM head is lm_head (dense, GELU, norm, decoder tied to the embeddings).
        rename=renamer("new.", "gte."), part_marker={"mlm": "lm_head.dense.weight"},
        sources={
            **mlm_sources("lm_head.dense", "lm_head.norm", "lm_head.decoder",
                           ["lm_head.decoder.bias", "lm_head.bias"]),
            "mlm_ln_weight": ["lm_head.norm.weight", "lm_head.layer_norm.weight"],
            "mlm_ln_bias": ["lm_head.norm.bias", "lm_head.layer_norm.bias"],
            "token_embedding": "embeddings.word_embeddings.weight",
            # type_vocab_size 0 (gte-*-en-v1.5): no table, one zero row
            "segment_embedding": ["embeddings.token_type_embeddings.weight", ZERO_TOKEN_TYPES],
            **linear("embeddings.LayerNorm", "embedding_ln"),
            **layer_linear(_GTE + "attention.qkv_proj", tuple(
                _GTE_NEW + f"self_attn.{n}_proj" for n in "qkv"), "qkv"),
            **layer_linear(_GTE + "attention.o_proj", _GTE_NEW + "self_attn.o_proj", "out"),
            **layer_linear(_GTE + "attn_ln", _GTE_NEW + "post_attention_layernorm", "ln1"),
            # up_gate_proj is [up | gate] with the gate activated: its halves trade places.
            f"layers.{LAYER}.ffn1_weight": [
                SwapHalves(_GTE + "mlp.up_gate_proj.weight"),
                (_GTE_NEW + "mlp.gate_proj.weight", _GTE_NEW + "mlp.up_proj.weight")],
            f"layers.{LAYER}.ffn1_bias": [
                SwapHalves(_GTE + "mlp.up_gate_proj.bias"),
                (_GTE_NEW + "mlp.gate_proj.bias", _GTE_NEW + "mlp.up_proj.bias")],
            **layer_linear(_GTE + "mlp.down_proj", _GTE_NEW + "mlp.down_proj", "ffn2"),
            **layer_linear(_GTE + "mlp_ln", _GTE_NEW + "post_mlp_layernorm", "ln2"),
        }))
