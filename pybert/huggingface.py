"""Serve Hugging Face BERT checkpoints and sentence-transformers models with the engine.

A Hugging Face BERT directory (BertModel, BertForPreTraining, BertForMaskedLM: config.json,
model.safetensors, tokenizer.json or vocab.txt) maps onto the engine exactly: GELU (erf) or
ReLU, the embedding LayerNorm, token-type embeddings, absolute positions, the tanh pooler with
``cls.seq_relationship`` as the NSP head, ``cls.predictions`` as the MLM head (transform,
LayerNorm, tied decoder). Anything the engine cannot compute exactly is refused with the reason.
Only safetensors weights are read: no pickles.

A sentence-transformers directory (modules.json) adds its pooling (CLS or mean over real
tokens), its optional Normalize module and its max_seq_length.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .config import BertConfig
from .files import (MAX_TOKENIZER_BYTES, MAX_VOCAB_BYTES, SAFETENSORS_DTYPES, CheckpointError,
                    SafetensorsHeader, read_file, read_json)
from .tokenize import check_truncation, text_item, warn_cut
from .weights import LAYER, WeightFormat, WeightsError, pack_weights

__all__ = ["is_huggingface_dir", "load_huggingface", "open_huggingface", "pack_hf_state_dict",
           "WordPieceTokenizer", "HF_FORMAT"]


def is_huggingface_dir(path: Path) -> bool:
    """Whether ``path`` is a sentence-transformers directory or a Hugging Face one (its
    config.json names a model_type; pybert's own config.json has a "format" instead)."""
    if (path / "modules.json").exists():
        return True
    if not (path / "config.json").exists():
        return False
    document = read_json(path / "config.json", what="config.json")
    return isinstance(document, dict) and document.get("model_type") == "bert" \
        and "format" not in document


def _read_json(path: Path, kind=dict):
    value = read_json(path, what=path.name)
    if not isinstance(value, kind):
        raise CheckpointError(f"{path} must hold a JSON {'object' if kind is dict else 'list'}")
    return value


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
    if hf.get("type_vocab_size", 2) != 2:
        raise CheckpointError(f"{where}: type_vocab_size {hf.get('type_vocab_size')} is not "
                              "served (the engine has two segments)")
    try:
        return BertConfig(vocab_size=need("vocab_size"), num_hiddens=need("hidden_size"),
                          ffn_num_hiddens=need("intermediate_size"),
                          num_heads=need("num_attention_heads"),
                          num_layers=need("num_hidden_layers"),
                          max_len=need("max_position_embeddings"),
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
        weight_map = _read_json(index).get("weight_map")
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
HF_FORMAT = WeightFormat(
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
        return pack_weights(state, HF_FORMAT, config, str(where), used=used)
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


class WordPieceTokenizer:
    """A checkpoint's WordPiece tokenizer (the ``tokenizers`` package), with the interface of
    pybert.tokenize.WordTokenizer: [CLS] a [SEP] (b [SEP]), token types, longest-first
    truncation to ``max_len`` with a warning or an error."""

    def __init__(self, path: Path, max_len: int):
        from tokenizers import Tokenizer
        from tokenizers.implementations import BertWordPieceTokenizer

        settings = {}
        if (path / "tokenizer_config.json").exists():
            settings = _read_json(path / "tokenizer_config.json")
        try:
            if (path / "tokenizer.json").exists():
                text = read_file(path / "tokenizer.json", MAX_TOKENIZER_BYTES, "tokenizer.json")
                self.tokenizer = Tokenizer.from_str(text.decode("utf-8"))
            elif (path / "vocab.txt").exists():
                text = read_file(path / "vocab.txt", MAX_VOCAB_BYTES, "vocab.txt")
                words = text.decode("utf-8").splitlines()
                self.tokenizer = BertWordPieceTokenizer(
                    {w: i for i, w in enumerate(words)},
                    lowercase=bool(settings.get("do_lower_case", True)),
                    strip_accents=settings.get("strip_accents"),
                    handle_chinese_chars=bool(settings.get("tokenize_chinese_chars", True))).\
                    _tokenizer
            else:
                raise FileNotFoundError(f"{path} has neither tokenizer.json nor vocab.txt")
        except (CheckpointError, FileNotFoundError):
            raise
        except Exception as err:  # the tokenizers package raises plain Exceptions
            raise CheckpointError(f"{path}: the tokenizer cannot be read: "
                                  f"{str(err)[:300]}") from None
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        model_max = settings.get("model_max_length")
        if isinstance(model_max, int) and 0 < model_max < max_len:
            max_len = model_max
        self.max_len = max_len
        tokens = {name: settings.get(f"{name}_token", default) for name, default in
                  (("pad", "[PAD]"), ("mask", "[MASK]"), ("cls", "[CLS]"), ("sep", "[SEP]"))}
        tokens = {k: v.get("content") if isinstance(v, dict) else v for k, v in tokens.items()}
        ids = {k: self.tokenizer.token_to_id(v) if isinstance(v, str) else None
               for k, v in tokens.items()}
        missing = [tokens[k] for k in ("cls", "sep") if ids[k] is None]
        if missing:
            raise CheckpointError(f"{path}: the tokenizer has no {missing}")
        self.pad_id = ids["pad"] if ids["pad"] is not None else 0
        self.mask_id = ids["mask"]

    def id_to_token(self, index: int) -> str:
        return self.tokenizer.id_to_token(index)

    def encode_all(self, items, truncation: str = "warn", start: int = 0):
        check_truncation(truncation)
        inputs = [text_item(item, start + i) for i, item in enumerate(items)]
        encodings = self.tokenizer.encode_batch(inputs)
        out, cut = [], 0
        for i, (item, enc) in enumerate(zip(inputs, encodings)):
            if len(enc.ids) > self.max_len:
                if truncation == "error":
                    raise ValueError(f"texts[{start + i}] has {len(enc.ids)} tokens, more than "
                                     f"max_len={self.max_len}; pass truncation='warn' to cut "
                                     "it")
                enc = self._truncated(item)
                cut += 1
            out.append((enc.ids, enc.type_ids))
        warn_cut(cut, self.max_len)
        return out

    def _truncated(self, item):
        self.tokenizer.enable_truncation(self.max_len, strategy="longest_first")
        try:
            return self.tokenizer.encode(*item) if isinstance(item, tuple) else \
                self.tokenizer.encode(item)
        finally:
            self.tokenizer.no_truncation()


def _sentence_transformers(path: Path):
    """(transformer folder, pooling, normalize, max_seq_length) of a sentence-transformers
    model directory."""
    modules = _read_json(path / "modules.json", list)
    transformer, pooling, normalize = None, "cls", False
    for module in modules:
        if not isinstance(module, dict) or not isinstance(module.get("path", ""), str):
            raise CheckpointError(f"{path}/modules.json: each module must be an object with a "
                                  "\"path\" string")
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        folder = path / module.get("path", "")
        if folder.resolve() != path.resolve() and path.resolve() not in folder.resolve().parents:
            raise CheckpointError(f"{path}/modules.json: module path {module['path']!r} leaves "
                                  "the model directory")
        if kind == "Transformer":
            transformer = folder
        elif kind == "Pooling":
            pool = _read_json(folder / "config.json")
            modes = [k for k, v in pool.items() if k.startswith("pooling_mode") and v]
            known = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean"}
            if len(modes) != 1 or modes[0] not in known:
                raise CheckpointError(f"{folder}: pooling {modes} is not served (CLS or mean "
                                      "over tokens)")
            pooling = known[modes[0]]
        elif kind == "Normalize":
            normalize = True
        else:
            raise CheckpointError(f"{path}: the sentence-transformers module {kind[:40]!r} is "
                                  "not served (Transformer, Pooling and Normalize are)")
    if transformer is None:
        raise CheckpointError(f"{path}/modules.json has no Transformer module")
    max_seq_length = None
    if (transformer / "sentence_bert_config.json").exists():
        max_seq_length = _read_json(transformer / "sentence_bert_config.json").get(
            "max_seq_length")
    return transformer, pooling, normalize, max_seq_length


def open_huggingface(path, device="cpu", dtype=torch.float32, **engine_options):
    """(engine, text model or None) of a Hugging Face BERT or sentence-transformers
    directory."""
    from .engine import Engine
    from .text import TextModel

    path = Path(path)
    pooling, normalize, max_seq_length, model_dir = "cls", False, None, path
    if (path / "modules.json").exists():
        model_dir, pooling, normalize, max_seq_length = _sentence_transformers(path)
    config = config_from_hf(_read_json(model_dir / "config.json"), model_dir)
    tokenizer = None
    if (model_dir / "tokenizer.json").exists() or (model_dir / "vocab.txt").exists():
        limit = config.max_len
        if isinstance(max_seq_length, int) and 0 < max_seq_length < limit:
            limit = max_seq_length
        tokenizer = WordPieceTokenizer(model_dir, limit)
    engine = Engine(config, _read_packed_weights(model_dir, config), device=device, dtype=dtype,
                    **engine_options)
    if tokenizer is None:
        return engine, None
    model = TextModel(engine, tokenizer, pooling=pooling, normalize=normalize,
                      nsp_is_next_label=0)
    return engine, model.attach()


def load_huggingface(path, device="cpu", dtype=torch.float32, **engine_options):
    """An Engine for a Hugging Face BERT or sentence-transformers directory."""
    return open_huggingface(path, device, dtype, **engine_options)[0]
