"""Hugging Face encoder directories (config.json, model.safetensors or its shards,
tokenizer.json or vocab.txt) read into a :class:`Checkpoint`: the families of
:mod:`pybert.checkpoint.families` (BERT, RoBERTa / XLM-RoBERTa / CamemBERT, DistilBERT,
ELECTRA), as base models, masked-LM models (the MLM head), BERT pretraining models (the NSP
head; Hugging Face's class 0 means "b follows a") and sequence classifiers (the classifier's
layers, its labels and how its logits become scores). Anything the engine cannot compute
exactly is refused with the reason. Only safetensors weights are read: no pickles.

A sentence-transformers directory wraps one of these (pybert.checkpoint.sentence_transformers).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import BertConfig
from ..engine.weights import WeightsError, pack_weights
from .families import ZERO_TOKEN_TYPES, Architecture, architecture_of, family, hf_activation
from .contents import Checkpoint, ClassifierSpec, HuggingFaceTokenizerSpec, LinearLayer
from .files import (MAX_TOKENIZER_BYTES, MAX_VOCAB_BYTES, SAFETENSORS_DTYPES, CheckpointError,
                    SafetensorsHeader, read_json, read_json_of, read_text)

__all__ = ["is_huggingface_dir", "read_huggingface", "config_from_hf", "pack_hf_state_dict",
           "HF_WEIGHT_MAP", "score_activation_of"]

BERT = family("BERT")
HF_WEIGHT_MAP = BERT.weight_map
# sentence-transformers' names of the activations a CrossEncoder applies to its logits.
_ST_ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity", "Softmax": "softmax"}


def is_huggingface_dir(path: Path) -> bool:
    """Whether ``path`` is a Hugging Face model directory (its config.json names a model_type;
    pybert's own config.json has a "format" instead)."""
    if not (path / "config.json").exists():
        return False
    document = read_json(path / "config.json", what="config.json")
    return isinstance(document, dict) and "model_type" in document and "format" not in document


def config_from_hf(hf: dict, where: Path) -> BertConfig:
    """The engine config of a Hugging Face config dict, or CheckpointError saying why the
    engine cannot serve it exactly."""
    return architecture_of(hf, where).read_config(hf, where)


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files of a model directory: model.safetensors, or the shards its
    model.safetensors.index.json names (plain file names in the directory)."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.exists():
        return [single]
    if index.exists():
        weight_map = read_json_of(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map must map tensor names to shard files")
        shards = sorted(set(weight_map.values()))
        bad = [s for s in shards if Path(s).name != s or s in (".", "..")]
        if bad:
            raise CheckpointError(f"{index}: shard names must be files in {path}, got {bad[:3]}")
        return [path / shard for shard in shards]
    if any((path / name).exists() for name in ("pytorch_model.bin", "model.bin")):
        raise CheckpointError(f"{path} has only pickled weights (pytorch_model.bin); pybert "
                              "reads safetensors only: re-save with save_pretrained("
                              "safe_serialization=True)")
    raise FileNotFoundError(f"{path} has no model.safetensors")


def pack_hf_state_dict(state: dict, config: BertConfig, where: Path,
                       used: set | None = None, architecture: Architecture = BERT) -> dict:
    """Hugging Face weights of ``architecture`` -> the engine's packed weights (heads where
    present); the keys read (renamed) are added to ``used``."""
    try:
        return pack_weights(state, architecture.weight_map, config, str(where), used=used)
    except WeightsError as err:
        raise CheckpointError(str(err)) from None


def _classifier_wanted(hf: dict, architecture: Architecture, names: set[str]) -> bool:
    """Whether the directory is a sequence classifier: its config says so, or (a config that
    names no architecture) every tensor of the family's classifier is there."""
    listed = hf.get("architectures")
    if isinstance(listed, list) and listed:
        wanted = any(isinstance(n, str) and n.endswith("ForSequenceClassification")
                     for n in listed)
        if wanted and not architecture.classifier:
            raise CheckpointError(f"{architecture.name}'s sequence-classification head is not "
                                  "served (its encoder is: a directory of the base model)")
        return wanted
    return bool(architecture.classifier) and \
        all(f"{module}.weight" in names for module, _ in architecture.classifier)


def score_activation_of(hf: dict, num_labels: int, where: Path) -> str:
    """How a classifier's logits become scores: what a sentence-transformers CrossEncoder saved
    in config.json (4-5: ``sentence_transformers.activation_fn``; earlier:
    ``sbert_ce_default_activation_function``), else Hugging Face's rule (one label or
    multi-label: sigmoid; regression: none; else softmax)."""
    saved = hf.get("sentence_transformers")
    name = saved.get("activation_fn") if isinstance(saved, dict) else None
    name = name or hf.get("sbert_ce_default_activation_function")
    if name is not None:
        return st_activation(name, num_labels, where)
    problem = hf.get("problem_type")
    if problem == "regression":
        return "identity"
    return "sigmoid" if num_labels == 1 or problem == "multi_label_classification" \
        else "softmax"


def st_activation(name, num_labels: int, where: Path) -> str:
    """A sentence-transformers activation_fn path (``torch.nn.modules.activation.Sigmoid``) as
    a score activation; None means its default (sigmoid for one label, else none)."""
    if name is None:
        return "sigmoid" if num_labels == 1 else "identity"
    short = str(name).rsplit(".", 1)[-1]
    if short not in _ST_ACTIVATIONS:
        raise CheckpointError(f"{where}: the CrossEncoder activation {str(name)[:80]!r} is not "
                              f"served ({', '.join(_ST_ACTIVATIONS)})")
    return _ST_ACTIVATIONS[short]


def _classifier(hf: dict, architecture: Architecture, state: dict, where: Path,
                hidden: int) -> ClassifierSpec:
    """The classifier's layers from ``state`` (renamed keys), checked against the config."""
    layers, width = [], hidden
    norm_after, norm_module = architecture.classifier_norm or (None, None)
    for module, activation in architecture.classifier:
        if activation.startswith("@"):  # named by the config
            activation = hf_activation(hf.get(activation[1:], "gelu"), where, activation[1:])
        weight, bias = state.get(f"{module}.weight"), state.get(f"{module}.bias")
        if weight is None:
            raise CheckpointError(f"{where}: config.json names a sequence classifier but the "
                                  f"weights lack {module}.weight")
        if weight.dim() != 2 or weight.shape[1] != width or \
                (bias is not None and tuple(bias.shape) != (weight.shape[0],)):
            raise CheckpointError(f"{where}: {module} has shape {tuple(weight.shape)}, expected "
                                  f"(n, {width}) with a bias of n")
        norm = {}
        if module == norm_after:
            norm_weight = state.get(f"{norm_module}.weight")
            norm_bias = state.get(f"{norm_module}.bias")
            if norm_weight is None or tuple(norm_weight.shape) != (weight.shape[0],) or \
                    (norm_bias is not None and norm_bias.shape != norm_weight.shape):
                raise CheckpointError(f"{where}: the classifier's {norm_module} is missing or "
                                      f"not of {weight.shape[0]} entries")
            norm = dict(norm_weight=norm_weight, norm_bias=norm_bias,
                        norm_eps=float(hf.get("norm_eps", 1e-5)))
        layers.append(LinearLayer(weight, bias, activation, **norm))
        width = weight.shape[0]
    labels = hf.get("id2label")
    if isinstance(labels, dict) and labels:
        if len(labels) != width:
            raise CheckpointError(f"{where}: id2label has {len(labels)} labels but the "
                                  f"classifier gives {width} outputs")
        names = tuple(str(labels.get(str(i), labels.get(i, f"LABEL_{i}")))[:200]
                      for i in range(width))
    else:
        names = tuple(f"LABEL_{i}" for i in range(width))
    pooling = hf.get("classifier_pooling", "cls")
    if pooling not in ("cls", "mean"):
        raise CheckpointError(f"{where}: classifier_pooling {str(pooling)[:40]!r} is not served "
                              "(cls, mean)")
    return ClassifierSpec(tuple(layers), names, score_activation_of(hf, width, where), pooling)


def _read_weights(path: Path, headers: list, config: BertConfig, architecture: Architecture,
                  classifier: bool) -> tuple[dict, dict]:
    """(packed weights, the classifier's tensors by renamed key) of a model directory. Every
    file's header is read first and the packing is tried on shapes alone (meta tensors), so a
    file that does not fit is refused before any data is read; then only the tensors the engine
    and the classifier use are read."""
    rename = architecture.weight_map.rename
    owner = {}
    for header in headers:
        for name in header.tensors:
            owner.setdefault(name, header)
    meta = {}  # the float tensors; other dtypes the packing needs are refused by name
    for name, header in owner.items():
        if header.tensors[name][0] in SAFETENSORS_DTYPES:
            meta[name] = header.meta_state([name])[name]
    zero_types = {ZERO_TOKEN_TYPES: torch.zeros((1, config.num_hiddens))} \
        if architecture.zero_token_types else {}
    used: set[str] = set()
    pack_hf_state_dict({**meta, **zero_types}, config, path, used, architecture)  # shapes only
    if classifier:
        used.update(f"{module}.{part}" for module in architecture.classifier_modules()
                    for part in ("weight", "bias"))
    by_file: dict[SafetensorsHeader, list] = {}
    for name in meta:
        if rename(name) in used:
            by_file.setdefault(owner[name], []).append(name)
    state = dict(zero_types)
    for header, names in by_file.items():
        state.update(header.load(names))
    heads = {rename(k): v for k, v in state.items()
             if any(rename(k).startswith(m + ".") for m in architecture.classifier_modules())}
    return pack_hf_state_dict(state, config, path, architecture=architecture), heads


def _tokenizer_spec(path: Path, max_len: int,
                    token_types: bool) -> HuggingFaceTokenizerSpec | None:
    """The tokenizer of a model directory (tokenizer.json, else a BERT vocab.txt), or None
    when it has neither."""
    settings = {}
    if (path / "tokenizer_config.json").exists():
        settings = read_json_of(path / "tokenizer_config.json")
    if (path / "tokenizer.json").exists():
        text = read_text(path / "tokenizer.json", MAX_TOKENIZER_BYTES, "tokenizer.json")
        return HuggingFaceTokenizerSpec(max_len, tokenizer_json=text, settings=settings,
                                        token_types=token_types)
    if (path / "vocab.txt").exists():
        text = read_text(path / "vocab.txt", MAX_VOCAB_BYTES, "vocab.txt")
        return HuggingFaceTokenizerSpec(max_len, settings=settings,
                                        vocab_tokens=text.splitlines(), token_types=token_types)
    return None


def read_huggingface(path, max_seq_length=None) -> Checkpoint:
    """A Hugging Face encoder directory read into a :class:`Checkpoint`. ``max_seq_length``
    (a sentence-transformers setting) caps the tokenizer's length below the model's."""
    path = Path(path)
    hf = read_json_of(path / "config.json")
    architecture = architecture_of(hf, path)
    config = architecture.read_config(hf, path)
    limit = config.max_len
    if isinstance(max_seq_length, int) and not isinstance(max_seq_length, bool) and \
            0 < max_seq_length < limit:
        limit = max_seq_length
    # The tokenizer before the weights: it is the cheaper check.
    tokenizer = _tokenizer_spec(path, limit, architecture.token_types)
    headers = [SafetensorsHeader(f) for f in _weight_files(path)]
    names = {architecture.weight_map.rename(n) for header in headers for n in header.tensors}
    wanted = _classifier_wanted(hf, architecture, names)
    weights, heads = _read_weights(path, headers, config, architecture, wanted)
    classifier = _classifier(hf, architecture, heads, path, config.num_hiddens) if wanted \
        else None
    return Checkpoint(path=path, format="huggingface", config=config, weights=weights,
                      tokenizer=tokenizer, architecture=architecture.name,
                      nsp_is_next_label=0, classifier=classifier)
