"""The Hugging Face encoder families the engine computes exactly, one file each, as data: how its
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

Adding a family is one new file here that defines ``FAMILY`` (an :class:`Architecture`: its
config reader, its weight map, its token types and classifier layers) and a test: the registry
below finds every module of this package that defines one (``docs/architecture.md``).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from ..files import CheckpointError
from .common import ZERO_TOKEN_TYPES, Architecture, hf_activation

__all__ = ["Architecture", "ARCHITECTURES", "ZERO_TOKEN_TYPES", "architecture_of", "family",
           "hf_activation", "register"]


def _discovered() -> list[Architecture]:
    """The FAMILY of every module of this package, BERT first, the others by name."""
    found = []
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        value = getattr(importlib.import_module(f".{module}", __name__), "FAMILY", None)
        if isinstance(value, Architecture):
            found.append(value)
    return sorted(found, key=lambda a: (a.name != "BERT", a.name))


ARCHITECTURES: list[Architecture] = _discovered()


def register(architecture: Architecture) -> None:
    """Serve one more family (a family file's FAMILY is registered when this package loads;
    this is for one defined elsewhere). Its model types must be new."""
    taken = {t for a in ARCHITECTURES for t in a.model_types} & set(architecture.model_types)
    if taken:
        raise ValueError(f"model types {sorted(taken)} are served already")
    ARCHITECTURES.append(architecture)


def family(name: str) -> Architecture:
    """The served family named ``name`` ("BERT", "RoBERTa", ...)."""
    for architecture in ARCHITECTURES:
        if architecture.name == name:
            return architecture
    raise KeyError(name)


def architecture_of(hf: dict, where: Path) -> Architecture:
    """The family of a Hugging Face config.json, or CheckpointError naming what is served."""
    model_type = hf.get("model_type")
    for architecture in ARCHITECTURES:
        if model_type in architecture.model_types:
            return architecture
    served = ", ".join(t for a in ARCHITECTURES for t in a.model_types)
    raise CheckpointError(f"{where}: model_type {str(model_type)[:40]!r} is not served (served: "
                          f"{served})")
