"""ModernBERT: pre-norm with a final norm and no LayerNorm biases, GeGLU (Wi: [a, g]), rotary
positions with a global and a local base, a local window in every layer but each
global_every-th; its classifier pools (cls or mean), then dense, activation, LayerNorm."""

from __future__ import annotations

import re
from pathlib import Path

from ...config import BertConfig
from ...engine.weights import LAYER, WeightMap
from ..files import CheckpointError
from .common import ZERO_TOKEN_TYPES, Architecture, check_head_dim, hf_activation, linear, \
    make_config, mlm_sources, need, renamer, rope_theta, theta


def _modernbert_config(hf: dict, where: Path) -> BertConfig:
    if hf.get("is_decoder") or hf.get("model_type") != "modernbert":
        raise CheckpointError(f"{where}: a ModernBERT decoder is not served")
    hidden, heads = need(hf, "hidden_size", where), need(hf, "num_attention_heads", where)
    layers = need(hf, "num_hidden_layers", where)
    check_head_dim(hf, where, hidden, heads)
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
    local = need(hf, "local_attention", where)
    if isinstance(local, bool) or not isinstance(local, int) or local < 2:
        raise CheckpointError(f"{where}: local_attention must be an integer >= 2")
    rope = hf.get("rope_parameters")
    if isinstance(rope, dict) and "full_attention" in rope:
        global_base = rope_theta(rope.get("full_attention"), where, "rope_parameters.full")
        local_base = rope_theta(rope.get("sliding_attention"), where,
                                 "rope_parameters.sliding")
    else:
        if hf.get("rope_scaling"):
            raise CheckpointError(f"{where}: rotary scaling (rope_scaling) is not served")
        global_base = theta(hf.get("global_rope_theta", 160000.0), where, "global_rope_theta")
        local_base = theta(hf.get("local_rope_theta") or global_base, where,
                            "local_rope_theta")
    act = hf_activation(hf.get("hidden_activation", "gelu"), where, "hidden_activation")
    head_act = hf_activation(hf.get("classifier_activation", "gelu"), where,
                              "classifier_activation")
    return make_config(where, vocab_size=need(hf, "vocab_size", where), num_hiddens=hidden,
                       ffn_num_hiddens=need(hf, "intermediate_size", where), num_heads=heads,
                       num_layers=layers, max_len=need(hf, "max_position_embeddings", where),
                       type_vocab_size=1, layer_norm_eps=hf.get("norm_eps", 1e-5),
                       ffn_activation=act, mlm_activation=head_act, embedding_layer_norm=True,
                       pre_norm=True, ffn_gated=True, rotary_base=global_base,
                       local_rotary_base=local_base, local_window=local // 2, global_every=every)


_MB = f"layers.{LAYER}."
FAMILY = Architecture(
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
        rename=renamer("model."), part_marker={"mlm": "decoder.bias"},
        sources={
            "token_embedding": "embeddings.tok_embeddings.weight",
            "segment_embedding": ZERO_TOKEN_TYPES,
            **linear("embeddings.norm", "embedding_ln"),
            **linear(_MB + "attn.Wqkv", "layers.{i}.qkv"),
            **linear(_MB + "attn.Wo", "layers.{i}.out"),
            **linear(_MB + "attn_norm", "layers.{i}.ln1"),   # absent in layer 0
            **linear(_MB + "mlp.Wi", "layers.{i}.ffn1"),     # [input | gate]: act(input) * gate
            **linear(_MB + "mlp.Wo", "layers.{i}.ffn2"),
            **linear(_MB + "mlp_norm", "layers.{i}.ln2"),
            **linear("final_norm", "final_ln"),
            **mlm_sources("head.dense", "head.norm", "decoder", ["decoder.bias"]),
            "mlm_decoder_weight": ["decoder.weight", "embeddings.tok_embeddings.weight"],
        }))
