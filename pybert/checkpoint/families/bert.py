"""BERT (model_type bert): post-norm, positions from 0, token types; MLM head
cls.predictions, NSP head, classifier pooler (tanh) + classifier."""

from __future__ import annotations

from .common import BERT_ENCODER, BERT_LAYER_KEY, Architecture, bert_config, mlm_sources, renamer
from ...engine.weights import WeightMap


FAMILY = Architecture(
    name="BERT", model_types=("bert",), token_types=True, read_config=bert_config,
    classifier=(("pooler.dense", "tanh"), ("classifier", "identity")),
    weight_map=WeightMap(
        name="Hugging Face BERT", layer_key=BERT_LAYER_KEY, rename=renamer("bert."),
        # BertModel has a pooler but no NSP classifier, and BertForMaskedLM no pooler at all.
        part_marker={"nsp": "cls.seq_relationship.weight",
                     "mlm": "cls.predictions.transform.dense.weight"},
        sources={**BERT_ENCODER,
                 "pooler_weight": "pooler.dense.weight", "pooler_bias": "pooler.dense.bias",
                 "nsp_weight": "cls.seq_relationship.weight",
                 "nsp_bias": "cls.seq_relationship.bias",
                 **mlm_sources("cls.predictions.transform.dense",
                                "cls.predictions.transform.LayerNorm", "cls.predictions.decoder",
                                ["cls.predictions.bias", "cls.predictions.decoder.bias"])}))
