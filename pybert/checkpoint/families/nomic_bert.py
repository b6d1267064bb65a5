"""NomicBERT (nomic-embed-text): post-norm, SwiGLU (fc12 activated, fc11 up), rotary
positions; nomic's own spellings and transformers' NomicBertConfig alike."""

from __future__ import annotations

import re
from pathlib import Path

from ...config import BertConfig
from ...engine.weights import LAYER, WeightMap
from ..files import CheckpointError
from .common import Architecture, check_head_dim, hf_activation, layer_linear, make_config, \
    mlm_sources, need, renamer, rope_theta, theta


def _nomic_config(hf: dict, where: Path) -> BertConfig:
    # Two spellings: nomic's own (n_embd, rotary_emb_base, activation_function "swiglu") and
    # transformers' NomicBertConfig (hidden_size, rope_parameters, hidden_act "silu").
    for key, served in (("rotary_emb_fraction", 1.0), ("rotary_emb_interleaved", False),
                        ("prenorm", False), ("rotary_scaling_factor", None),
                        ("use_rms_norm", False)):
        if key in hf and hf[key] != served:
            raise CheckpointError(f"{where}: {key} {str(hf[key])[:40]} is not served "
                                  f"(only {served})")
    hidden, heads = need(hf, "hidden_size", where, "n_embd"), \
        need(hf, "num_attention_heads", where, "n_head")
    check_head_dim(hf, where, hidden, heads)
    if hf.get("rope_parameters") is not None:
        base = rope_theta(hf["rope_parameters"], where, "rope_parameters")
    else:
        base = theta(hf.get("rotary_emb_base", 1000.0), where, "rotary_emb_base")
    if "activation_function" in hf:
        gated = {"swiglu": "silu", "geglu": "gelu"}
        name = hf["activation_function"]
        act = gated.get(name) if isinstance(name, str) else None
        if act is None:
            raise CheckpointError(f"{where}: activation_function "
                                  f"{str(name)[:40]!r} is not served "
                                  "(swiglu, geglu)")
    else:
        act = hf_activation(hf.get("hidden_act", "silu"), where, "hidden_act")
    return make_config(where, vocab_size=need(hf, "vocab_size", where), num_hiddens=hidden,
                       ffn_num_hiddens=need(hf, "intermediate_size", where, "n_inner"),
                       num_heads=heads, num_layers=need(hf, "num_hidden_layers", where, "n_layer"),
                       max_len=need(hf, "max_position_embeddings", where, "n_positions"),
                       type_vocab_size=hf.get("type_vocab_size", 2),
                       layer_norm_eps=hf.get("layer_norm_eps", hf.get("layer_norm_epsilon", 1e-12)),
                       ffn_activation=act, mlm_activation=act, embedding_layer_norm=True,
                       ffn_gated=True, rotary_base=base)


_NOMIC = f"encoder.layers.{LAYER}."
_NOMIC_NEW = f"layers.{LAYER}."
FAMILY = Architecture(
    name="NomicBERT", model_types=("nomic_bert",), token_types=True, read_config=_nomic_config,
    classifier=(),
    weight_map=WeightMap(
        name="Hugging Face NomicBERT", layer_key=re.compile(r"(?:encoder\.)?layers\.(\d+)\..+"),
        # NomicBertForMaskedLM saves its encoder under "nomic_bert.", nomic's own code under
        # "bert."; the MLM head is BERT's, its LayerNorm named layer_norm.
        rename=renamer("nomic_bert.", "bert."),
        part_marker={"mlm": "cls.predictions.transform.dense.weight"},
        sources={
            **mlm_sources("cls.predictions.transform.dense",
                           "cls.predictions.transform.layer_norm", "cls.predictions.decoder",
                           ["cls.predictions.bias", "cls.predictions.decoder.bias"]),
            "token_embedding": "embeddings.word_embeddings.weight",
            "segment_embedding": "embeddings.token_type_embeddings.weight",
            "embedding_ln_weight": ["emb_ln.weight", "embeddings.LayerNorm.weight"],
            "embedding_ln_bias": ["emb_ln.bias", "embeddings.LayerNorm.bias"],
            **layer_linear(_NOMIC + "attn.Wqkv", tuple(
                _NOMIC_NEW + f"self_attn.{n}_proj" for n in "qkv"), "qkv"),
            **layer_linear(_NOMIC + "attn.out_proj", _NOMIC_NEW + "self_attn.o_proj", "out"),
            **layer_linear(_NOMIC + "norm1", _NOMIC_NEW + "post_attention_layernorm", "ln1"),
            # fc12 is the gate nomic activates (act(fc12 x) * fc11 x): it goes first.
            f"layers.{LAYER}.ffn1_weight": [
                (_NOMIC + "mlp.fc12.weight", _NOMIC + "mlp.fc11.weight"),
                (_NOMIC_NEW + "mlp.gate_proj.weight", _NOMIC_NEW + "mlp.up_proj.weight")],
            f"layers.{LAYER}.ffn1_bias": [
                (_NOMIC + "mlp.fc12.bias", _NOMIC + "mlp.fc11.bias"),
                (_NOMIC_NEW + "mlp.gate_proj.bias", _NOMIC_NEW + "mlp.up_proj.bias")],
            **layer_linear(_NOMIC + "mlp.fc2", _NOMIC_NEW + "mlp.down_proj", "ffn2"),
            **layer_linear(_NOMIC + "norm2", _NOMIC_NEW + "post_mlp_layernorm", "ln2"),
        }))
