"""DistilBERT: BERT's encoder under its own names, no token types, positions from 0."""

from __future__ import annotations

import re
from pathlib import Path

from ...config import BertConfig
from ...engine.weights import LAYER, WeightMap
from .common import ZERO_TOKEN_TYPES, Architecture, check_encoder, make_config, mlm_sources, \
    need, plain_activation, renamer


def _distilbert_config(hf: dict, where: Path) -> BertConfig:
    check_encoder(hf, where)
    act = plain_activation(hf, "activation", where)
    return make_config(where, vocab_size=need(hf, "vocab_size", where),
                       num_hiddens=need(hf, "dim", where),
                       ffn_num_hiddens=need(hf, "hidden_dim", where),
                       num_heads=need(hf, "n_heads", where), num_layers=need(hf, "n_layers", where),
                       max_len=need(hf, "max_position_embeddings", where), type_vocab_size=1,
                       layer_norm_eps=1e-12, ffn_activation=act, mlm_activation=act,
                       embedding_layer_norm=True)


_DISTIL = f"transformer.layer.{LAYER}."
FAMILY = Architecture(
    name="DistilBERT", model_types=("distilbert",), token_types=False, zero_token_types=True,
    read_config=_distilbert_config,
    classifier=(("pre_classifier", "relu"), ("classifier", "identity")),
    weight_map=WeightMap(
        name="Hugging Face DistilBERT", layer_key=re.compile(r"transformer\.layer\.(\d+)\..+"),
        rename=renamer("distilbert."), part_marker={"mlm": "vocab_transform.weight"},
        sources={
            "token_embedding": "embeddings.word_embeddings.weight",
            "segment_embedding": ZERO_TOKEN_TYPES,
            "pos_embedding": "embeddings.position_embeddings.weight",
            "embedding_ln_weight": "embeddings.LayerNorm.weight",
            "embedding_ln_bias": "embeddings.LayerNorm.bias",
            "layers.{i}.qkv_weight": tuple(_DISTIL + f"attention.{n}_lin.weight" for n in "qkv"),
            "layers.{i}.qkv_bias": tuple(_DISTIL + f"attention.{n}_lin.bias" for n in "qkv"),
            "layers.{i}.out_weight": _DISTIL + "attention.out_lin.weight",
            "layers.{i}.out_bias": _DISTIL + "attention.out_lin.bias",
            "layers.{i}.ln1_weight": _DISTIL + "sa_layer_norm.weight",
            "layers.{i}.ln1_bias": _DISTIL + "sa_layer_norm.bias",
            "layers.{i}.ffn1_weight": _DISTIL + "ffn.lin1.weight",
            "layers.{i}.ffn1_bias": _DISTIL + "ffn.lin1.bias",
            "layers.{i}.ffn2_weight": _DISTIL + "ffn.lin2.weight",
            "layers.{i}.ffn2_bias": _DISTIL + "ffn.lin2.bias",
            "layers.{i}.ln2_weight": _DISTIL + "output_layer_norm.weight",
            "layers.{i}.ln2_bias": _DISTIL + "output_layer_norm.bias",
            **mlm_sources("vocab_transform", "vocab_layer_norm", "vocab_projector",
                           ["vocab_projector.bias"])}))
