"""RoBERTa, XLM-RoBERTa, CamemBERT: BERT's encoder with positions from pad_token_id + 1, no
token types (one row), the LM head's activation always GELU."""

from __future__ import annotations

from pathlib import Path

from ...config import BertConfig
from ...engine.weights import WeightMap
from ..files import CheckpointError
from .common import BERT_ENCODER, BERT_LAYER_KEY, Architecture, bert_config, mlm_sources, renamer


def _roberta_config(hf: dict, where: Path) -> BertConfig:
    # Positions count from padding_idx + 1 (fairseq's make_positions); the LM head's
    # activation is always GELU.
    pad = hf.get("pad_token_id", 1)
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise CheckpointError(f"{where}: pad_token_id must be an integer >= 0, got {pad!r}")
    return bert_config(hf, where, mlm_activation="gelu", position_offset=pad + 1)


FAMILY = Architecture(
    name="RoBERTa", model_types=("roberta", "xlm-roberta", "camembert"), token_types=False,
    read_config=_roberta_config,
    classifier=(("classifier.dense", "tanh"), ("classifier.out_proj", "identity")),
    weight_map=WeightMap(
        name="Hugging Face RoBERTa", layer_key=BERT_LAYER_KEY, rename=renamer("roberta."),
        part_marker={"mlm": "lm_head.dense.weight"},
        sources={**BERT_ENCODER,
                 **mlm_sources("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder",
                                ["lm_head.bias", "lm_head.decoder.bias"])}))
