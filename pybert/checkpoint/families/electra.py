"""ELECTRA (discriminators and encoders): BERT's encoder; embeddings narrower than the hidden
state are normalised at their width and projected (embeddings_project)."""

from __future__ import annotations

from pathlib import Path

from ...config import BertConfig
from ...engine.weights import WeightMap
from .common import BERT_ENCODER, BERT_LAYER_KEY, Architecture, bert_config, make_config, renamer


def _electra_config(hf: dict, where: Path) -> BertConfig:
    # Embeddings narrower than the hidden state are projected to it (embeddings_project).
    config = bert_config(hf, where)
    embedding = hf.get("embedding_size", config.num_hiddens)
    if embedding == config.num_hiddens:
        return config
    return make_config(where, **{**config.to_dict(), "embedding_size": embedding})


FAMILY = Architecture(
    name="ELECTRA", model_types=("electra",), token_types=True, read_config=_electra_config,
    classifier=(("classifier.dense", "gelu"), ("classifier.out_proj", "identity")),
    weight_map=WeightMap(name="Hugging Face ELECTRA", layer_key=BERT_LAYER_KEY,
                         rename=renamer("electra."),
                         sources={**BERT_ENCODER,
                                  "embedding_project_weight": "embeddings_project.weight",
                                  "embedding_project_bias": "embeddings_project.bias"}))
