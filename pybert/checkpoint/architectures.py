"""The Hugging Face encoder families the engine computes exactly, each as data: how its
config.json reads as a :class:`~pybert.config.BertConfig`, which of its tensors make the packed
weights, whether it takes token type ids, and the layers of its sequence-classification head.

The BERT family's members are BERT's post-norm encoder and differ at the edges:

| family | model_type | positions | token types | MLM head | classifier on the first token |
|---|---|---|---|---|---|
| BERT | bert | from 0 | yes | cls.predictions | pooler (tanh), classifier |
| RoBERTa | roberta, xlm-roberta, camembert | from pad_token_id + 1 | no (one row) | lm_head (GELU) | classifier.dense (tanh), out_proj |
| DistilBERT | distilbert | from 0 | none | vocab_transform (its activation) | pre_classifier (ReLU), classifier |
| ELECTRA | electra | from 0 | yes | (discriminator: none) | classifier.dense (GELU), out_proj |

ELECTRA's embeddings may be narrower than its hidden state (``embedding_size``): they are
normalised at their width and projected (``embeddings_project``).

The modern encoders differ in the layer itself, which the engine takes as data (BertConfig's
pre_norm, ffn_gated, rotary_base, local_window, ...):

| family | model_type | norm | FFN | positions | attention | biases |
|---|---|---|---|---|---|---|
| ModernBERT | modernbert | pre-norm, final norm, no LN bias | GeGLU (Wi: [a, g]) | rotary, global/local bases | local window every layer but each global_every-th | none by default |
| NomicBERT | nomic_bert | post-norm | SwiGLU (fc12 act, fc11 up) | rotary | global | none |
| GTE (new) | gte, new | post-norm | GeGLU (up_gate_proj: [up, gate]) | rotary | global | all but up/gate |

Their MLM heads (ModernBertForMaskedLM's head and decoder, NomicBertForMaskedLM's
cls.predictions, GteForMaskedLM's lm_head) are read, and ModernBertForSequenceClassification's
classifier (cls or mean pooling, dense, activation, LayerNorm, classifier).
Transformers 5 writes NomicBERT's and GTE's tensors under their original names (``attn.Wqkv``,
``mlp.up_gate_proj``); the names of its modules (``q_proj``, ``gate_proj``) are read too.
Rotary scaling: transformers' dynamic NTK computes as the default within max_len; Alibaba's
GTE configs' fixed NTK (``rope_scaling`` {"type": "ntk"}) is computed (``rotary_ntk_factor``).
Anything else (another model_type, relative positions, other rotary scaling, a decoder) is
refused with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import BertConfig
from ..engine.weights import LAYER, SwapHalves, WeightMap
from .files import CheckpointError

__all__ = ["Architecture", "ARCHITECTURES", "architecture_of", "hf_activation"]


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


def _need(hf: dict, name: str, where: Path, *spellings: str):
    """The config's value of ``name``, or of the first of its other ``spellings`` it has (a
    family's old and new key names)."""
    for key in (name, *spellings):
        if key in hf:
            return hf[key]
    raise CheckpointError(f"{where}: config.json has no {' or '.join((name, *spellings))}")


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


def _renamer(*prefixes: str) -> Callable[[str], str]:
    """Keys without the base model's prefix (the first of ``prefixes`` a key has)."""
    def rename(key: str) -> str:
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
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


# ---------------------------------------------------------------------------------------------
# Modern encoders: rotary positions, gated FFNs, pre-norm, windowed attention, absent biases.

def hf_activation(name, where: Path, key: str) -> str:
    """A Hugging Face activation name as the engine's: the exact GELU or SiLU."""
    if name in ("gelu", "silu", "relu"):
        return name
    if name == "swish":
        return "silu"
    raise CheckpointError(f"{where}: {key} {str(name)[:40]!r} is not served (the engine computes "
                          "'gelu', the exact erf form, 'silu' and 'relu')")


def _theta(value, where: Path, key: str) -> float:
    """A rotary base from config.json: a number > 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 1 or \
            value == float("inf"):
        raise CheckpointError(f"{where}: {key} must be a finite number > 1, got "
                              f"{str(value)[:40]!r}")
    return float(value)


def _rope_theta(params, where: Path, key: str) -> float:
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
    return _theta(params.get("rope_theta"), where, f"{key}.rope_theta")


def _check_head_dim(hf: dict, where: Path, hidden, heads) -> None:
    head_dim = hf.get("head_dim")
    if head_dim is not None and isinstance(hidden, int) and isinstance(heads, int) and heads \
            and head_dim * heads != hidden:
        raise CheckpointError(f"{where}: head_dim {head_dim} x {heads} heads is not the hidden "
                              f"size {hidden} (not served)")


def _modernbert_config(hf: dict, where: Path) -> BertConfig:
    if hf.get("is_decoder") or hf.get("model_type") != "modernbert":
        raise CheckpointError(f"{where}: a ModernBERT decoder is not served")
    hidden, heads = _need(hf, "hidden_size", where), _need(hf, "num_attention_heads", where)
    layers = _need(hf, "num_hidden_layers", where)
    _check_head_dim(hf, where, hidden, heads)
    # Layer kinds: transformers 5 lists them; older configs give the period of global layers.
    every = hf.get("global_attn_every_n_layers", 3)
    kinds = hf.get("layer_types")
    if kinds is not None:
        if not isinstance(kinds, list) or not isinstance(layers, int) or len(kinds) != layers:
            raise CheckpointError(f"{where}: layer_types must list num_hidden_layers kinds")
        globals_at = [i for i, k in enumerate(kinds) if k == "full_attention"]
        if any(k not in ("full_attention", "sliding_attention") for k in kinds):
            raise CheckpointError(f"{where}: layer_types may hold only full_attention and "
                                  "sliding_attention")
        every = globals_at[1] - globals_at[0] if len(globals_at) > 1 else max(layers, 1)
        if not kinds or [i % every == 0 for i in range(layers)] != \
                [k == "full_attention" for k in kinds]:
            raise CheckpointError(f"{where}: layer_types {str(kinds)[:80]} are not a period of "
                                  "one global layer and local ones from layer 0 (not served)")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise CheckpointError(f"{where}: global_attn_every_n_layers must be >= 1")
    local = _need(hf, "local_attention", where)
    if isinstance(local, bool) or not isinstance(local, int) or local < 2:
        raise CheckpointError(f"{where}: local_attention must be an integer >= 2")
    rope = hf.get("rope_parameters")
    if isinstance(rope, dict) and "full_attention" in rope:
        global_base = _rope_theta(rope.get("full_attention"), where, "rope_parameters.full")
        local_base = _rope_theta(rope.get("sliding_attention"), where,
                                 "rope_parameters.sliding")
    else:
        if hf.get("rope_scaling"):
            raise CheckpointError(f"{where}: rotary scaling (rope_scaling) is not served")
        global_base = _theta(hf.get("global_rope_theta", 160000.0), where, "global_rope_theta")
        local_base = _theta(hf.get("local_rope_theta") or global_base, where,
                            "local_rope_theta")
    act = hf_activation(hf.get("hidden_activation", "gelu"), where, "hidden_activation")
    head_act = hf_activation(hf.get("classifier_activation", "gelu"), where,
                              "classifier_activation")
    return _config(where, vocab_size=_need(hf, "vocab_size", where), num_hiddens=hidden,
                   ffn_num_hiddens=_need(hf, "intermediate_size", where), num_heads=heads,
                   num_layers=layers, max_len=_need(hf, "max_position_embeddings", where),
                   type_vocab_size=1, layer_norm_eps=hf.get("norm_eps", 1e-5),
                   ffn_activation=act, mlm_activation=head_act, embedding_layer_norm=True,
                   pre_norm=True, ffn_gated=True, rotary_base=global_base,
                   local_rotary_base=local_base, local_window=local // 2, global_every=every)


def _nomic_config(hf: dict, where: Path) -> BertConfig:
    # Two spellings: nomic's own (n_embd, rotary_emb_base, activation_function "swiglu") and
    # transformers' NomicBertConfig (hidden_size, rope_parameters, hidden_act "silu").
    for key, served in (("rotary_emb_fraction", 1.0), ("rotary_emb_interleaved", False),
                        ("prenorm", False), ("rotary_scaling_factor", None),
                        ("use_rms_norm", False)):
        if key in hf and hf[key] != served:
            raise CheckpointError(f"{where}: {key} {str(hf[key])[:40]} is not served "
                                  f"(only {served})")
    hidden, heads = _need(hf, "hidden_size", where, "n_embd"), \
        _need(hf, "num_attention_heads", where, "n_head")
    _check_head_dim(hf, where, hidden, heads)
    if hf.get("rope_parameters") is not None:
        base = _rope_theta(hf["rope_parameters"], where, "rope_parameters")
    else:
        base = _theta(hf.get("rotary_emb_base", 1000.0), where, "rotary_emb_base")
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
    return _config(where, vocab_size=_need(hf, "vocab_size", where), num_hiddens=hidden,
                   ffn_num_hiddens=_need(hf, "intermediate_size", where, "n_inner"),
                   num_heads=heads, num_layers=_need(hf, "num_hidden_layers", where, "n_layer"),
                   max_len=_need(hf, "max_position_embeddings", where, "n_positions"),
                   type_vocab_size=hf.get("type_vocab_size", 2),
                   layer_norm_eps=hf.get("layer_norm_eps", hf.get("layer_norm_epsilon", 1e-12)),
                   ffn_activation=act, mlm_activation=act, embedding_layer_norm=True,
                   ffn_gated=True, rotary_base=base)


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
        base = _rope_theta(hf["rope_parameters"], where, "rope_parameters")
    else:
        base = _theta(hf.get("rope_theta", 160000.0), where, "rope_theta")
        ntk = _gte_ntk_factor(hf.get("rope_scaling"), where)
    hidden, heads = _need(hf, "hidden_size", where), _need(hf, "num_attention_heads", where)
    _check_head_dim(hf, where, hidden, heads)
    types = hf.get("type_vocab_size", 0)
    return _config(where, vocab_size=_need(hf, "vocab_size", where), num_hiddens=hidden,
                   ffn_num_hiddens=_need(hf, "intermediate_size", where), num_heads=heads,
                   num_layers=_need(hf, "num_hidden_layers", where),
                   max_len=_need(hf, "max_position_embeddings", where),
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


def _linear(prefix: str, packed: str, bias: bool = True) -> dict:
    """A packed weight (and its bias) from one nn.Linear's tensors."""
    out = {f"{packed}_weight": f"{prefix}.weight"}
    if bias:
        out[f"{packed}_bias"] = f"{prefix}.bias"
    return out


def _layer_linear(old: str, new, packed: str) -> dict:
    """A per-layer packed weight and bias from the on-disk name or, failing it, the module's
    (transformers' in-memory name, a tuple when it concatenates several)."""
    def alternatives(part: str) -> list:
        names = new if isinstance(new, tuple) else (new,)
        renamed = tuple(f"{n}.{part}" for n in names)
        return [f"{old}.{part}", renamed if len(renamed) > 1 else renamed[0]]
    return {f"layers.{LAYER}.{packed}_weight": alternatives("weight"),
            f"layers.{LAYER}.{packed}_bias": alternatives("bias")}


_MB = f"layers.{LAYER}."
MODERNBERT = Architecture(
    name="ModernBERT", model_types=("modernbert",), token_types=False, zero_token_types=True,
    read_config=_modernbert_config,
    # ModernBertForSequenceClassification: cls or mean pooling (classifier_pooling), then
    # head (dense, classifier_activation, LayerNorm) and classifier.
    classifier=(("head.dense", "@classifier_activation"), ("classifier", "identity")),
    classifier_norm=("head.dense", "head.norm"),
    weight_map=WeightMap(
        name="Hugging Face ModernBERT", layer_key=re.compile(r"layers\.(\d+)\..+"),
        # ForMaskedLM and ForSequenceClassification both have a "head": the MLM's decoder
        # bias (decoder_bias, true in every released model) tells them apart.
        rename=_renamer("model."), part_marker={"mlm": "decoder.bias"},
        sources={
            "token_embedding": "embeddings.tok_embeddings.weight",
            "segment_embedding": ZERO_TOKEN_TYPES,
            **_linear("embeddings.norm", "embedding_ln"),
            **_linear(_MB + "attn.Wqkv", "layers.{i}.qkv"),
            **_linear(_MB + "attn.Wo", "layers.{i}.out"),
            **_linear(_MB + "attn_norm", "layers.{i}.ln1"),   # absent in layer 0
            **_linear(_MB + "mlp.Wi", "layers.{i}.ffn1"),     # [input | gate]: act(input) * gate
            **_linear(_MB + "mlp.Wo", "layers.{i}.ffn2"),
            **_linear(_MB + "mlp_norm", "layers.{i}.ln2"),
            **_linear("final_norm", "final_ln"),
            **_mlm_sources("head.dense", "head.norm", "decoder", ["decoder.bias"]),
            "mlm_decoder_weight": ["decoder.weight", "embeddings.tok_embeddings.weight"],
        }))

_NOMIC = f"encoder.layers.{LAYER}."
_NOMIC_NEW = f"layers.{LAYER}."
NOMIC_BERT = Architecture(
    name="NomicBERT", model_types=("nomic_bert",), token_types=True, read_config=_nomic_config,
    classifier=(),
    weight_map=WeightMap(
        name="Hugging Face NomicBERT", layer_key=re.compile(r"(?:encoder\.)?layers\.(\d+)\..+"),
        # NomicBertForMaskedLM saves its encoder under "nomic_bert.", nomic's own code under
        # "bert."; the MLM head is BERT's, its LayerNorm named layer_norm.
        rename=_renamer("nomic_bert.", "bert."),
        part_marker={"mlm": "cls.predictions.transform.dense.weight"},
        sources={
            **_mlm_sources("cls.predictions.transform.dense",
                           "cls.predictions.transform.layer_norm", "cls.predictions.decoder",
                           ["cls.predictions.bias", "cls.predictions.decoder.bias"]),
            "token_embedding": "embeddings.word_embeddings.weight",
            "segment_embedding": "embeddings.token_type_embeddings.weight",
            "embedding_ln_weight": ["emb_ln.weight", "embeddings.LayerNorm.weight"],
            "embedding_ln_bias": ["emb_ln.bias", "embeddings.LayerNorm.bias"],
            **_layer_linear(_NOMIC + "attn.Wqkv", tuple(
                _NOMIC_NEW + f"self_attn.{n}_proj" for n in "qkv"), "qkv"),
            **_layer_linear(_NOMIC + "attn.out_proj", _NOMIC_NEW + "self_attn.o_proj", "out"),
            **_layer_linear(_NOMIC + "norm1", _NOMIC_NEW + "post_attention_layernorm", "ln1"),
            # fc12 is the gate nomic activates (act(fc12 x) * fc11 x): it goes first.
            f"layers.{LAYER}.ffn1_weight": [
                (_NOMIC + "mlp.fc12.weight", _NOMIC + "mlp.fc11.weight"),
                (_NOMIC_NEW + "mlp.gate_proj.weight", _NOMIC_NEW + "mlp.up_proj.weight")],
            f"layers.{LAYER}.ffn1_bias": [
                (_NOMIC + "mlp.fc12.bias", _NOMIC + "mlp.fc11.bias"),
                (_NOMIC_NEW + "mlp.gate_proj.bias", _NOMIC_NEW + "mlp.up_proj.bias")],
            **_layer_linear(_NOMIC + "mlp.fc2", _NOMIC_NEW + "mlp.down_proj", "ffn2"),
            **_layer_linear(_NOMIC + "norm2", _NOMIC_NEW + "post_mlp_layernorm", "ln2"),
        }))

_GTE = f"encoder.layer.{LAYER}."
_GTE_NEW = f"layers.{LAYER}."
GTE = Architecture(
    name="GTE", model_types=("gte", "new"), token_types=False, zero_token_types=True,
    read_config=_gte_config, classifier=(),
    weight_map=WeightMap(
        name="Hugging Face GTE", layer_key=re.compile(r"(?:encoder\.layer|layers)\.(\d+)\..+"),
        # Alibaba's code saves its encoder under "new.", transformers' GteForMaskedLM under
        # "gte."; the MLM head is lm_head (dense, GELU, norm, decoder tied to the embeddings).
        rename=_renamer("new.", "gte."), part_marker={"mlm": "lm_head.dense.weight"},
        sources={
            **_mlm_sources("lm_head.dense", "lm_head.norm", "lm_head.decoder",
                           ["lm_head.decoder.bias", "lm_head.bias"]),
            "mlm_ln_weight": ["lm_head.norm.weight", "lm_head.layer_norm.weight"],
            "mlm_ln_bias": ["lm_head.norm.bias", "lm_head.layer_norm.bias"],
            "token_embedding": "embeddings.word_embeddings.weight",
            # type_vocab_size 0 (gte-*-en-v1.5): no table, one zero row
            "segment_embedding": ["embeddings.token_type_embeddings.weight", ZERO_TOKEN_TYPES],
            **_linear("embeddings.LayerNorm", "embedding_ln"),
            **_layer_linear(_GTE + "attention.qkv_proj", tuple(
                _GTE_NEW + f"self_attn.{n}_proj" for n in "qkv"), "qkv"),
            **_layer_linear(_GTE + "attention.o_proj", _GTE_NEW + "self_attn.o_proj", "out"),
            **_layer_linear(_GTE + "attn_ln", _GTE_NEW + "post_attention_layernorm", "ln1"),
            # up_gate_proj is [up | gate] with the gate activated: its halves trade places.
            f"layers.{LAYER}.ffn1_weight": [
                SwapHalves(_GTE + "mlp.up_gate_proj.weight"),
                (_GTE_NEW + "mlp.gate_proj.weight", _GTE_NEW + "mlp.up_proj.weight")],
            f"layers.{LAYER}.ffn1_bias": [
                SwapHalves(_GTE + "mlp.up_gate_proj.bias"),
                (_GTE_NEW + "mlp.gate_proj.bias", _GTE_NEW + "mlp.up_proj.bias")],
            **_layer_linear(_GTE + "mlp.down_proj", _GTE_NEW + "mlp.down_proj", "ffn2"),
            **_layer_linear(_GTE + "mlp_ln", _GTE_NEW + "post_mlp_layernorm", "ln2"),
        }))

ARCHITECTURES = (BERT, ROBERTA, DISTILBERT, ELECTRA, MODERNBERT, NOMIC_BERT, GTE)
MODEL_TYPES = tuple(t for a in ARCHITECTURES for t in a.model_types)


def architecture_of(hf: dict, where: Path) -> Architecture:
    """The family of a Hugging Face config.json, or CheckpointError naming what is served."""
    model_type = hf.get("model_type")
    for architecture in ARCHITECTURES:
        if model_type in architecture.model_types:
            return architecture
    raise CheckpointError(f"{where}: model_type {str(model_type)[:40]!r} is not served (served: "
                          f"{', '.join(MODEL_TYPES)})")
