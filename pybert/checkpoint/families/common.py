"""What the families share: the :class:`Architecture` record each family file defines, the
readers of config.json keys, and BERT's encoder weight names (BERT, RoBERTa and ELECTRA use
them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...config import BertConfig
from ...engine.weights import LAYER, WeightMap
from ..files import CheckpointError

__all__ = ["Architecture", "ZERO_TOKEN_TYPES", "need", "plain_activation", "check_encoder",
           "make_config", "bert_config", "renamer", "BERT_ENCODER", "BERT_LAYER_KEY",
           "mlm_sources", "hf_activation", "theta", "rope_theta", "check_head_dim", "linear",
           "layer_linear"]


@dataclass(frozen=True)
class Architecture:
    """One family of Hugging Face encoders. Keys are spelled as ``weight_map.rename`` leaves
    them (the base model's prefix dropped)."""

    name: str
    model_types: tuple[str, ...]
    weight_map: WeightMap
    read_config: Callable[[dict, Path], BertConfig]
    token_types: bool                     # does the model read token type ids?
    # (module key, activation) per head layer; "@key": the activation config.json names there
    classifier: tuple[tuple[str, str], ...]
    # (layer module, its LayerNorm module): a norm after that layer's activation
    classifier_norm: tuple[str, str] | None = None
    zero_token_types: bool = False        # supply ZERO_TOKEN_TYPES (one zero row) as a source

    def classifier_modules(self) -> list[str]:
        """Every module of the classifier, its norm included."""
        return [m for m, _ in self.classifier] + \
            ([self.classifier_norm[1]] if self.classifier_norm else [])


# The key under which a family without a token type table gets one zero row (the engine adds
# a segment row to every token; adding zeros leaves the embedding exact).
ZERO_TOKEN_TYPES = "pybert:zero_token_types"


def need(hf: dict, name: str, where: Path, *spellings: str):
    """The config's value of ``name``, or of the first of its other ``spellings`` it has (a
    family's old and new key names)."""
    for key in (name, *spellings):
        if key in hf:
            return hf[key]
    raise CheckpointError(f"{where}: config.json has no {' or '.join((name, *spellings))}")


def plain_activation(hf: dict, key: str, where: Path, default: str = "gelu") -> str:
    act = hf.get(key, default)
    if act not in ("gelu", "relu"):
        raise CheckpointError(f"{where}: {key} {act!r} is not served (the engine computes "
                              "'gelu', the exact erf form, and 'relu')")
    return act


def check_encoder(hf: dict, where: Path) -> None:
    position = hf.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise CheckpointError(f"{where}: position_embedding_type {position!r} is not served "
                              "(only 'absolute')")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise CheckpointError(f"{where}: a decoder (is_decoder / add_cross_attention) is not "
                              "served")


def make_config(where: Path, **fields) -> BertConfig:
    try:
        return BertConfig(**fields)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: {err}") from None


def bert_config(hf: dict, where: Path, mlm_activation: str | None = None,
                 position_offset: int = 0) -> BertConfig:
    """BERT's config keys (BERT, RoBERTa, ELECTRA): ``position_offset`` rows of the position
    table come before the first token's."""
    check_encoder(hf, where)
    act = plain_activation(hf, "hidden_act", where)
    max_positions = need(hf, "max_position_embeddings", where)
    if isinstance(max_positions, int) and max_positions <= position_offset:
        raise CheckpointError(f"{where}: max_position_embeddings {max_positions} leaves no "
                              f"position after the offset {position_offset}")
    return make_config(where, vocab_size=need(hf, "vocab_size", where),
                       num_hiddens=need(hf, "hidden_size", where),
                       ffn_num_hiddens=need(hf, "intermediate_size", where),
                       num_heads=need(hf, "num_attention_heads", where),
                       num_layers=need(hf, "num_hidden_layers", where),
                       max_len=max_positions - position_offset if isinstance(max_positions, int)
                       else max_positions,
                       type_vocab_size=hf.get("type_vocab_size", 2),
                       position_offset=position_offset,
                       layer_norm_eps=hf.get("layer_norm_eps", 1e-12), ffn_activation=act,
                       mlm_activation=mlm_activation or act, embedding_layer_norm=True)


def renamer(*prefixes: str) -> Callable[[str], str]:
    """Keys without the base model's prefix (the first of ``prefixes`` a key has)."""
    def rename(key: str) -> str:
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta",
                                                                          "LayerNorm.bias")
    return rename


BERT_LAYER = f"encoder.layer.{LAYER}."
BERT_ENCODER = {
    "token_embedding": "embeddings.word_embeddings.weight",
    "segment_embedding": "embeddings.token_type_embeddings.weight",
    "pos_embedding": "embeddings.position_embeddings.weight",
    "embedding_ln_weight": "embeddings.LayerNorm.weight",
    "embedding_ln_bias": "embeddings.LayerNorm.bias",
    "layers.{i}.qkv_weight": tuple(BERT_LAYER + f"attention.self.{n}.weight"
                                   for n in ("query", "key", "value")),
    "layers.{i}.qkv_bias": tuple(BERT_LAYER + f"attention.self.{n}.bias"
                                 for n in ("query", "key", "value")),
    "layers.{i}.out_weight": BERT_LAYER + "attention.output.dense.weight",
    "layers.{i}.out_bias": BERT_LAYER + "attention.output.dense.bias",
    "layers.{i}.ln1_weight": BERT_LAYER + "attention.output.LayerNorm.weight",
    "layers.{i}.ln1_bias": BERT_LAYER + "attention.output.LayerNorm.bias",
    "layers.{i}.ffn1_weight": BERT_LAYER + "intermediate.dense.weight",
    "layers.{i}.ffn1_bias": BERT_LAYER + "intermediate.dense.bias",
    "layers.{i}.ffn2_weight": BERT_LAYER + "output.dense.weight",
    "layers.{i}.ffn2_bias": BERT_LAYER + "output.dense.bias",
    "layers.{i}.ln2_weight": BERT_LAYER + "output.LayerNorm.weight",
    "layers.{i}.ln2_bias": BERT_LAYER + "output.LayerNorm.bias",
}
BERT_LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\..+")


def mlm_sources(dense: str, norm: str, decoder: str, bias: list[str]) -> dict:
    """An MLM head (transform, activation, LayerNorm, decoder) whose decoder is tied to the
    word embeddings unless the file has its own."""
    return {"mlm_dense_weight": f"{dense}.weight", "mlm_dense_bias": f"{dense}.bias",
            "mlm_ln_weight": f"{norm}.weight", "mlm_ln_bias": f"{norm}.bias",
            "mlm_decoder_weight": [f"{decoder}.weight", "embeddings.word_embeddings.weight"],
            "mlm_decoder_bias": bias}


def hf_activation(name, where: Path, key: str) -> str:
    """A Hugging Face activation name as the engine's: the exact GELU or SiLU."""
    if name in ("gelu", "silu", "relu"):
        return name
    if name == "swish":
        return "silu"
    raise CheckpointError(f"{where}: {key} {str(name)[:40]!r} is not served (the engine computes "
                          "'gelu', the exact erf form, 'silu' and 'relu')")


def theta(value, where: Path, key: str) -> float:
    """A rotary base from config.json: a number > 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 1 or \
            value == float("inf"):
        raise CheckpointError(f"{where}: {key} must be a finite number > 1, got "
                              f"{str(value)[:40]!r}")
    return float(value)


def rope_theta(params, where: Path, key: str) -> float:
    """The base of a rotary embedding from a rope_parameters dict: the default one, or
    transformers' dynamic NTK scaling, which changes the frequencies only for sequences longer
    than max_position_embeddings (never served: max_len is that) and so computes as the
    default."""
    if not isinstance(params, dict):
        raise CheckpointError(f"{where}: {key} must be an object, got {str(params)[:40]!r}")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "dynamic"):
        raise CheckpointError(f"{where}: rotary scaling {str(kind)[:40]!r} ({key}) is not served "
                              "(the default rotary embedding and dynamic NTK are)")
    return theta(params.get("rope_theta"), where, f"{key}.rope_theta")


def check_head_dim(hf: dict, where: Path, hidden, heads) -> None:
    head_dim = hf.get("head_dim")
    if head_dim is not None and isinstance(hidden, int) and isinstance(heads, int) and heads \
            and head_dim * heads != hidden:
        raise CheckpointError(f"{where}: head_dim {head_dim} x {heads} heads is not the hidden "
                              f"size {hidden} (not served)")


def linear(prefix: str, packed: str, bias: bool = True) -> dict:
    """A packed weight (and its bias) from one nn.Linear's tensors."""
    out = {f"{packed}_weight": f"{prefix}.weight"}
    if bias:
        out[f"{packed}_bias"] = f"{prefix}.bias"
    return out


def layer_linear(old: str, new, packed: str) -> dict:
    """A per-layer packed weight and bias from the on-disk name or, failing it, the module's
    (transformers' in-memory name, a tuple when it concatenates several)."""
    def alternatives(part: str) -> list:
        names = new if isinstance(new, tuple) else (new,)
        renamed = tuple(f"{n}.{part}" for n in names)
        return [f"{old}.{part}", renamed if len(renamed) > 1 else renamed[0]]
    return {f"layers.{LAYER}.{packed}_weight": alternatives("weight"),
            f"layers.{LAYER}.{packed}_bias": alternatives("bias")}
