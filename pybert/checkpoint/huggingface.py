"""Serve Hugging Face BERT checkpoints and sentence-transformers models with the engine.

A Hugging Face BERT directory (BertModel, BertForPreTraining, BertForMaskedLM: config.json,
model.safetensors, tokenizer.json or vocab.txt) maps onto the engine exactly: GELU (erf) or
ReLU, the embedding LayerNorm, token-type embeddings, absolute positions, the tanh pooler with
``cls.seq_relationship`` as the NSP head, ``cls.predictions`` as the MLM head (transform,
LayerNorm, tied decoder). Anything the engine cannot compute exactly is refused with the reason.
Only safetensors weights are read: no pickles.

A sentence-transformers directory wraps one of these (pybert.checkpoint.sentence_transformers).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..config import BertConfig
from ..engine.weights import LAYER, WeightMap, WeightsError, pack_weights
from .contents import Checkpoint, WordPieceTokenizerSpec
from .files import (MAX_TOKENIZER_BYTES, MAX_VOCAB_BYTES, SAFETENSORS_DTYPES, CheckpointError,
                    SafetensorsHeader, read_json, read_json_of, read_text)

__all__ = ["is_huggingface_dir", "read_huggingface", "config_from_hf", "pack_hf_state_dict",
           "HF_WEIGHT_MAP"]


def is_huggingface_dir(path: Path) -> bool:
    """Whether ``path`` is a Hugging Face BERT directory (its config.json names a model_type;
    pybert's own config.json has a "format" instead)."""
    if not (path / "config.json").exists():
        return False
    document = read_json(path / "config.json", what="config.json")
    return isinstance(document, dict) and document.get("model_type") == "bert" \
        and "format" not in document


def config_from_hf(hf: dict, where: Path) -> BertConfig:
    """The engine config of a Hugging Face BertConfig dict, or CheckpointError saying why the
    engine cannot serve it exactly."""
    def need(name):
        if name not in hf:
            raise CheckpointError(f"{where}: config has no {name}")
        return hf[name]

    if hf.get("model_type") != "bert":
        raise CheckpointError(f"{where}: model_type {hf.get('model_type')!r} is not 'bert'")
    act = hf.get("hidden_act", "gelu")
    if act not in ("gelu", "relu"):
        raise CheckpointError(f"{where}: hidden_act {act!r} is not served (the engine computes "
                              "'gelu', the exact erf form, and 'relu')")
    position = hf.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise CheckpointError(f"{where}: position_embedding_type {position!r} is not served "
                              "(only 'absolute')")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise CheckpointError(f"{where}: a BERT decoder (is_decoder / add_cross_attention) is "
                              "not served")
    try:
        return BertConfig(vocab_size=need("vocab_size"), num_hiddens=need("hidden_size"),
                          ffn_num_hiddens=need("intermediate_size"),
                          num_heads=need("num_attention_heads"),
                          num_layers=need("num_hidden_layers"),
                          max_len=need("max_position_embeddings"),
                          type_vocab_size=hf.get("type_vocab_size", 2),
                          layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                          ffn_activation=act, mlm_activation=act, embedding_layer_norm=True)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: {err}") from None


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


def _normalise_key(key: str) -> str:
    key = key[len("bert."):] if key.startswith("bert.") else key
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta",
                                                                      "LayerNorm.bias")


_HF_LAYER = f"encoder.layer.{LAYER}."
HF_WEIGHT_MAP = WeightMap(
    name="Hugging Face BERT",
    layer_key=re.compile(r"encoder\.layer\.(\d+)\..+"),
    rename=_normalise_key,
    # BertModel has a pooler but no NSP classifier, and BertForMaskedLM no pooler at all.
    part_marker={"nsp": "cls.seq_relationship.weight",
                 "mlm": "cls.predictions.transform.dense.weight"},
    sources={
        "token_embedding": "embeddings.word_embeddings.weight",
        "segment_embedding": "embeddings.token_type_embeddings.weight",
        "pos_embedding": "embeddings.position_embeddings.weight",
        "embedding_ln_weight": "embeddings.LayerNorm.weight",
        "embedding_ln_bias": "embeddings.LayerNorm.bias",
        "pooler_weight": "pooler.dense.weight",
        "pooler_bias": "pooler.dense.bias",
        "nsp_weight": "cls.seq_relationship.weight",
        "nsp_bias": "cls.seq_relationship.bias",
        "mlm_dense_weight": "cls.predictions.transform.dense.weight",
        "mlm_dense_bias": "cls.predictions.transform.dense.bias",
        "mlm_ln_weight": "cls.predictions.transform.LayerNorm.weight",
        "mlm_ln_bias": "cls.predictions.transform.LayerNorm.bias",
        # The decoder is tied to the word embeddings unless the file has its own.
        "mlm_decoder_weight": ["cls.predictions.decoder.weight",
                               "embeddings.word_embeddings.weight"],
        "mlm_decoder_bias": ["cls.predictions.bias", "cls.predictions.decoder.bias"],
        "layers.{i}.qkv_weight": tuple(_HF_LAYER + f"attention.self.{n}.weight"
                                       for n in ("query", "key", "value")),
        "layers.{i}.qkv_bias": tuple(_HF_LAYER + f"attention.self.{n}.bias"
                                     for n in ("query", "key", "value")),
        "layers.{i}.out_weight": _HF_LAYER + "attention.output.dense.weight",
        "layers.{i}.out_bias": _HF_LAYER + "attention.output.dense.bias",
        "layers.{i}.ln1_weight": _HF_LAYER + "attention.output.LayerNorm.weight",
        "layers.{i}.ln1_bias": _HF_LAYER + "attention.output.LayerNorm.bias",
        "layers.{i}.ffn1_weight": _HF_LAYER + "intermediate.dense.weight",
        "layers.{i}.ffn1_bias": _HF_LAYER + "intermediate.dense.bias",
        "layers.{i}.ffn2_weight": _HF_LAYER + "output.dense.weight",
        "layers.{i}.ffn2_bias": _HF_LAYER + "output.dense.bias",
        "layers.{i}.ln2_weight": _HF_LAYER + "output.LayerNorm.weight",
        "layers.{i}.ln2_bias": _HF_LAYER + "output.LayerNorm.bias",
    },
)


def pack_hf_state_dict(state: dict, config: BertConfig, where: Path,
                       used: set | None = None) -> dict:
    """Hugging Face BERT weights -> the engine's packed weights (heads where present); the
    keys read (normalised) are added to ``used``."""
    try:
        return pack_weights(state, HF_WEIGHT_MAP, config, str(where), used=used)
    except WeightsError as err:
        raise CheckpointError(str(err)) from None


def _read_packed_weights(path: Path, config: BertConfig) -> dict:
    """The packed weights of a model directory. Every file's header is read first and the
    packing is tried on shapes alone (meta tensors), so a file that does not fit is refused
    before any data is read; then only the tensors the engine uses are read."""
    headers = [SafetensorsHeader(f) for f in _weight_files(path)]
    owner = {}
    for header in headers:
        for name in header.tensors:
            owner.setdefault(name, header)
    meta = {}  # the float tensors; other dtypes the packing needs are refused by name
    for name, header in owner.items():
        if header.tensors[name][0] in SAFETENSORS_DTYPES:
            meta[name] = header.meta_state([name])[name]
    used: set[str] = set()
    pack_hf_state_dict(meta, config, path, used)  # shapes only
    by_file: dict[SafetensorsHeader, list] = {}
    for name in meta:
        if _normalise_key(name) in used:
            by_file.setdefault(owner[name], []).append(name)
    state = {}
    for header, names in by_file.items():
        state.update(header.load(names))
    return pack_hf_state_dict(state, config, path)


def _tokenizer_spec(path: Path, max_len: int) -> WordPieceTokenizerSpec | None:
    """The WordPiece tokenizer of a model directory (tokenizer.json, else vocab.txt), or None
    when it has neither."""
    settings = {}
    if (path / "tokenizer_config.json").exists():
        settings = read_json_of(path / "tokenizer_config.json")
    if (path / "tokenizer.json").exists():
        text = read_text(path / "tokenizer.json", MAX_TOKENIZER_BYTES, "tokenizer.json")
        return WordPieceTokenizerSpec(max_len, tokenizer_json=text, settings=settings)
    if (path / "vocab.txt").exists():
        text = read_text(path / "vocab.txt", MAX_VOCAB_BYTES, "vocab.txt")
        return WordPieceTokenizerSpec(max_len, settings=settings, vocab_tokens=text.splitlines())
    return None


def read_huggingface(path, max_seq_length=None) -> Checkpoint:
    """A Hugging Face BERT directory read into a :class:`Checkpoint` (Hugging Face's NSP labels:
    0 means "b follows a"). ``max_seq_length`` (a sentence-transformers setting) caps the
    tokenizer's length below the model's."""
    path = Path(path)
    config = config_from_hf(read_json_of(path / "config.json"), path)
    limit = config.max_len
    if isinstance(max_seq_length, int) and not isinstance(max_seq_length, bool) and \
            0 < max_seq_length < limit:
        limit = max_seq_length
    tokenizer = _tokenizer_spec(path, limit)  # before the weights: it is the cheaper check
    return Checkpoint(path=path, format="huggingface", config=config,
                      weights=_read_packed_weights(path, config), tokenizer=tokenizer,
                      nsp_is_next_label=0)
