"""The Hugging Face encoder families the engine computes exactly, each as data: how its
config.json reads as a :class:`~pybert.config.BertConfig`, which of its tensors make the packed
weights, whether it takes token type ids, and the layers of its sequence-classification head.

All of them are BERT's post-norm encoder; they differ at the edges:

| family | model_type | positions | token types | MLM head | classifier on the first token |
|---|---|---|---|---|---|
| BERT | bert | from 0 | yes | cls.predictions | pooler (tanh), classifier |
| RoBERTa | roberta, xlm-roberta, camembert | from pad_token_id + 1 | no (one row) | lm_head (GELU) | classifier.dense (tanh), out_proj |
| DistilBERT | distilbert | from 0 | none | vocab_transform (its activation) | pre_classifier (ReLU), classifier |
| ELECTRA | electra | from 0 | yes | (discriminator: none) | classifier.dense (GELU), out_proj |

ELECTRA's embeddings may be narrower than its hidden state (``embedding_size``): they are
normalised at their width and projected (``embeddings_project``). Anything else (another
model_type, relative or rotary positions, a decoder) is refused with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import BertConfig
from ..engine.weights import LAYER, WeightMap
from .files import CheckpointError

__all__ = ["Architecture", "ARCHITECTURES", "architecture_of"]


@dataclass(frozen=True)
class Architecture:
    """One family of Hugging Face encoders. Keys are spelled as ``weight_map.rename`` leaves
    them (the base model's prefix dropped)."""

    name: str
    model_types: tuple[str, ...]
    weight_map: WeightMap
    read_config: Callable[[dict, Path], BertConfig]
    token_types: bool                     # does the model read token type ids?
    classifier: tuple[tuple[str, str], ...]  # (module key, activation) per head layer
    zero_token_types: bool = False        # no token type table: the engine gets one zero row


def _need(hf: dict, name: str, where: Path):
    if name not in hf:
        raise CheckpointError(f"{where}: config.json has no {name}")
    return hf[name]


def _activation(hf: dict, key: str, where: Path, default: str = "gelu") -> str:
    act = hf.get(key, default)
    if act not in ("gelu", "relu"):
        raise CheckpointError(f"{where}: {key} {act!r} is not served (the engine computes "
                              "'gelu', the exact erf form, and 'relu')")
    return act


def _check_encoder(hf: dict, where: Path) -> None:
    position = hf.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise CheckpointError(f"{where}: position_embedding_type {position!r} is not served "
                              "(only 'absolute')")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise CheckpointError(f"{where}: a decoder (is_decoder / add_cross_attention) is not "
                              "served")


def _config(where: Path, **fields) -> BertConfig:
    try:
        return BertConfig(**fields)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: {err}") from None


def _bert_config(hf: dict, where: Path, mlm_activation: str | None = None,
                 position_offset: int = 0) -> BertConfig:
    """BERT's config keys (BERT, RoBERTa, ELECTRA): ``position_offset`` rows of the position
    table come before the first token's."""
    _check_encoder(hf, where)
    act = _activation(hf, "hidden_act", where)
    max_positions = _need(hf, "max_position_embeddings", where)
    if isinstance(max_positions, int) and max_positions <= position_offset:
        raise CheckpointError(f"{where}: max_position_embeddings {max_positions} leaves no "
                              f"position after the offset {position_offset}")
    return _config(where, vocab_size=_need(hf, "vocab_size", where),
                   num_hiddens=_need(hf, "hidden_size", where),
                   ffn_num_hiddens=_need(hf, "intermediate_size", where),
                   num_heads=_need(hf, "num_attention_heads", where),
                   num_layers=_need(hf, "num_hidden_layers", where),
                   max_len=max_positions - position_offset if isinstance(max_positions, int)
                   else max_positions,
                   type_vocab_size=hf.get("type_vocab_size", 2),
                   position_offset=position_offset,
                   layer_norm_eps=hf.get("layer_norm_eps", 1e-12), ffn_activation=act,
                   mlm_activation=mlm_activation or act, embedding_layer_norm=True)


def _roberta_config(hf: dict, where: Path) -> BertConfig:
    # Positions count from padding_idx + 1 (fairseq's make_positions); the LM head's
    # activation is always GELU.
    pad = hf.get("pad_token_id", 1)
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise CheckpointError(f"{where}: pad_token_id must be an integer >= 0, got {pad!r}")
    return _bert_config(hf, where, mlm_activation="gelu", position_offset=pad + 1)


def _electra_config(hf: dict, where: Path) -> BertConfig:
    # Embeddings narrower than the hidden state are projected to it (embeddings_project).
    config = _bert_config(hf, where)
    embedding = hf.get("embedding_size", config.num_hiddens)
    if embedding == config.num_hiddens:
        return config
    return _config(where, **{**config.to_dict(), "embedding_size": embedding})


def _distilbert_config(hf: dict, where: Path) -> BertConfig:
    _check_encoder(hf, where)
    act = _activation(hf, "activation", where)
    return _config(where, vocab_size=_need(hf, "vocab_size", where),
                   num_hiddens=_need(hf, "dim", where),
                   ffn_num_hiddens=_need(hf, "hidden_dim", where),
                   num_heads=_need(hf, "n_heads", where), num_layers=_need(hf, "n_layers", where),
                   max_len=_need(hf, "max_position_embeddings", where), type_vocab_size=1,
                   layer_norm_eps=1e-12, ffn_activation=act, mlm_activation=act,
                   embedding_layer_norm=True)


def _renamer(prefix: str) -> Callable[[str], str]:
    def rename(key: str) -> str:
        key = key[len(prefix):] if key.startswith(prefix) else key
        return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta",
                                                                          "LayerNorm.bias")
    return rename


_LAYER = f"encoder.layer.{LAYER}."
_BERT_ENCODER = {
    "token_embedding": "embeddings.word_embeddings.weight",
    "segment_embedding": "embeddings.token_type_embeddings.weight",
    "pos_embedding": "embeddings.position_embeddings.weight",
    "embedding_ln_weight": "embeddings.LayerNorm.weight",
    "embedding_ln_bias": "embeddings.LayerNorm.bias",
    "layers.{i}.qkv_weight": tuple(_LAYER + f"attention.self.{n}.weight"
                                   for n in ("query", "key", "value")),
    "layers.{i}.qkv_bias": tuple(_LAYER + f"attention.self.{n}.bias"
                                 for n in ("query", "key", "value")),
    "layers.{i}.out_weight": _LAYER + "attention.output.dense.weight",
    "layers.{i}.out_bias": _LAYER + "attention.output.dense.bias",
    "layers.{i}.ln1_weight": _LAYER + "attention.output.LayerNorm.weight",
    "layers.{i}.ln1_bias": _LAYER + "attention.output.LayerNorm.bias",
    "layers.{i}.ffn1_weight": _LAYER + "intermediate.dense.weight",
    "layers.{i}.ffn1_bias": _LAYER + "intermediate.dense.bias",
    "layers.{i}.ffn2_weight": _LAYER + "output.dense.weight",
    "layers.{i}.ffn2_bias": _LAYER + "output.dense.bias",
    "layers.{i}.ln2_weight": _LAYER + "output.LayerNorm.weight",
    "layers.{i}.ln2_bias": _LAYER + "output.LayerNorm.bias",
}
_BERT_LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\..+")


def _mlm_sources(dense: str, norm: str, decoder: str, bias: list[str]) -> dict:
    """An MLM head (transform, activation, LayerNorm, decoder) whose decoder is tied to the
    word embeddings unless the file has its own."""
    return {"mlm_dense_weight": f"{dense}.weight", "mlm_dense_bias": f"{dense}.bias",
            "mlm_ln_weight": f"{norm}.weight", "mlm_ln_bias": f"{norm}.bias",
            "mlm_decoder_weight": [f"{decoder}.weight", "embeddings.word_embeddings.weight"],
            "mlm_decoder_bias": bias}


BERT = Architecture(
    name="BERT", model_types=("bert",), token_types=True, read_config=_bert_config,
    classifier=(("pooler.dense", "tanh"), ("classifier", "identity")),
    weight_map=WeightMap(
        name="Hugging Face BERT", layer_key=_BERT_LAYER_KEY, rename=_renamer("bert."),
        # BertModel has a pooler but no NSP classifier, and BertForMaskedLM no pooler at all.
        part_marker={"nsp": "cls.seq_relationship.weight",
                     "mlm": "cls.predictions.transform.dense.weight"},
        sources={**_BERT_ENCODER,
                 "pooler_weight": "pooler.dense.weight", "pooler_bias": "pooler.dense.bias",
                 "nsp_weight": "cls.seq_relationship.weight",
                 "nsp_bias": "cls.seq_relationship.bias",
                 **_mlm_sources("cls.predictions.transform.dense",
                                "cls.predictions.transform.LayerNorm", "cls.predictions.decoder",
                                ["cls.predictions.bias", "cls.predictions.decoder.bias"])}))

ROBERTA = Architecture(
    name="RoBERTa", model_types=("roberta", "xlm-roberta", "camembert"), token_types=False,
    read_config=_roberta_config,
    classifier=(("classifier.dense", "tanh"), ("classifier.out_proj", "identity")),
    weight_map=WeightMap(
        name="Hugging Face RoBERTa", layer_key=_BERT_LAYER_KEY, rename=_renamer("roberta."),
        part_marker={"mlm": "lm_head.dense.weight"},
        sources={**_BERT_ENCODER,
                 **_mlm_sources("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder",
                                ["lm_head.bias", "lm_head.decoder.bias"])}))

_DISTIL = f"transformer.layer.{LAYER}."
DISTILBERT = Architecture(
    name="DistilBERT", model_types=("distilbert",), token_types=False, zero_token_types=True,
    read_config=_distilbert_config,
    classifier=(("pre_classifier", "relu"), ("classifier", "identity")),
    weight_map=WeightMap(
        name="Hugging Face DistilBERT", layer_key=re.compile(r"transformer\.layer\.(\d+)\..+"),
        rename=_renamer("distilbert."), part_marker={"mlm": "vocab_transform.weight"},
        sources={
            "token_embedding": "embeddings.word_embeddings.weight",
            "segment_embedding": "embeddings.token_type_embeddings.weight",  # the zero row
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
            **_mlm_sources("vocab_transform", "vocab_layer_norm", "vocab_projector",
                           ["vocab_projector.bias"])}))

ELECTRA = Architecture(
    name="ELECTRA", model_types=("electra",), token_types=True, read_config=_electra_config,
    classifier=(("classifier.dense", "gelu"), ("classifier.out_proj", "identity")),
    weight_map=WeightMap(name="Hugging Face ELECTRA", layer_key=_BERT_LAYER_KEY,
                         rename=_renamer("electra."),
                         sources={**_BERT_ENCODER,
                                  "embedding_project_weight": "embeddings_project.weight",
                                  "embedding_project_bias": "embeddings_project.bias"}))

ARCHITECTURES = (BERT, ROBERTA, DISTILBERT, ELECTRA)
MODEL_TYPES = tuple(t for a in ARCHITECTURES for t in a.model_types)


def architecture_of(hf: dict, where: Path) -> Architecture:
    """The family of a Hugging Face config.json, or CheckpointError naming what is served."""
    model_type = hf.get("model_type")
    for architecture in ARCHITECTURES:
        if model_type in architecture.model_types:
            return architecture
    raise CheckpointError(f"{where}: model_type {str(model_type)[:40]!r} is not served (served: "
                          f"{', '.join(MODEL_TYPES)})")
