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

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .checkpoint import CheckpointError
from .config import BertConfig
from .tokenize import check_truncation, text_item, warn_cut

__all__ = ["is_huggingface_dir", "load_huggingface", "pack_hf_state_dict", "WordPieceTokenizer"]


def is_huggingface_dir(path: Path) -> bool:
    if (path / "modules.json").is_file():
        return True
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") == "bert"
    except (OSError, ValueError, AttributeError):
        return False


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(value, (dict, list)):
        raise CheckpointError(f"{path} must hold a JSON object")
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
                          layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
                          ffn_activation=act, mlm_activation=act, embedding_layer_norm=True)
    except ValueError as err:
        raise CheckpointError(f"{where}: {err}") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            state = {}
            for shard in shards:
                state.update(load_file(str(path / shard)))
            return state
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"{path}: unreadable safetensors weights: {err}") from None
    if any((path / name).exists() for name in ("pytorch_model.bin", "model.bin")):
        raise CheckpointError(f"{path} has only pickled weights (pytorch_model.bin); pybert "
                              "reads safetensors only: re-save with save_pretrained("
                              "safe_serialization=True)")
    raise FileNotFoundError(f"{path} has no model.safetensors")


def _normalise_keys(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        key = key[len("bert."):] if key.startswith("bert.") else key
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta",
                                                                         "LayerNorm.bias")
        out[key] = value
    return out


def pack_hf_state_dict(state: dict, config: BertConfig, where: Path) -> dict:
    """Hugging Face BERT weights -> the engine's packed weights (heads where present)."""
    sd = _normalise_keys(state)
    h = config.num_hiddens

    def get(key, shape):
        if key not in sd:
            raise CheckpointError(f"{where}: weights lack {key}")
        if tuple(sd[key].shape) != tuple(shape):
            raise CheckpointError(f"{where}: {key} has shape {tuple(sd[key].shape)}, expected "
                                  f"{tuple(shape)}")
        return sd[key]

    e = "embeddings."
    packed = {
        "token_embedding": get(e + "word_embeddings.weight", (config.vocab_size, h)),
        "segment_embedding": get(e + "token_type_embeddings.weight", (2, h)),
        "pos_embedding": get(e + "position_embeddings.weight", (config.max_len, h)),
        "embedding_ln_weight": get(e + "LayerNorm.weight", (h,)),
        "embedding_ln_bias": get(e + "LayerNorm.bias", (h,)),
    }
    f = config.ffn_num_hiddens
    for i in range(config.num_layers):
        p, q = f"encoder.layer.{i}.", f"layers.{i}."
        att = p + "attention."
        packed[q + "qkv_weight"] = torch.cat([get(att + f"self.{n}.weight", (h, h))
                                              for n in ("query", "key", "value")])
        packed[q + "qkv_bias"] = torch.cat([get(att + f"self.{n}.bias", (h,))
                                            for n in ("query", "key", "value")])
        packed[q + "out_weight"] = get(att + "output.dense.weight", (h, h))
        packed[q + "out_bias"] = get(att + "output.dense.bias", (h,))
        packed[q + "ln1_weight"] = get(att + "output.LayerNorm.weight", (h,))
        packed[q + "ln1_bias"] = get(att + "output.LayerNorm.bias", (h,))
        packed[q + "ffn1_weight"] = get(p + "intermediate.dense.weight", (f, h))
        packed[q + "ffn1_bias"] = get(p + "intermediate.dense.bias", (f,))
        packed[q + "ffn2_weight"] = get(p + "output.dense.weight", (h, f))
        packed[q + "ffn2_bias"] = get(p + "output.dense.bias", (h,))
        packed[q + "ln2_weight"] = get(p + "output.LayerNorm.weight", (h,))
        packed[q + "ln2_bias"] = get(p + "output.LayerNorm.bias", (h,))
    if "pooler.dense.weight" in sd and "cls.seq_relationship.weight" in sd:
        packed.update(pooler_weight=get("pooler.dense.weight", (h, h)),
                      pooler_bias=get("pooler.dense.bias", (h,)),
                      nsp_weight=get("cls.seq_relationship.weight", (2, h)),
                      nsp_bias=get("cls.seq_relationship.bias", (2,)))
    t = "cls.predictions."
    if t + "transform.dense.weight" in sd:
        decoder = sd.get(t + "decoder.weight", packed["token_embedding"])  # tied by default
        bias = sd.get(t + "bias", sd.get(t + "decoder.bias"))
        if bias is None:
            raise CheckpointError(f"{where}: the MLM head has no decoder bias")
        packed.update(mlm_dense_weight=get(t + "transform.dense.weight", (h, h)),
                      mlm_dense_bias=get(t + "transform.dense.bias", (h,)),
                      mlm_ln_weight=get(t + "transform.LayerNorm.weight", (h,)),
                      mlm_ln_bias=get(t + "transform.LayerNorm.bias", (h,)),
                      mlm_decoder_weight=decoder, mlm_decoder_bias=bias)
    return packed


class WordPieceTokenizer:
    """A checkpoint's WordPiece tokenizer (the ``tokenizers`` package), with the interface of
    pybert.tokenize.WordTokenizer: [CLS] a [SEP] (b [SEP]), token types, longest-first
    truncation to ``max_len`` with a warning or an error."""

    def __init__(self, path: Path, max_len: int):
        from tokenizers import Tokenizer
        from tokenizers.implementations import BertWordPieceTokenizer

        settings = {}
        if (path / "tokenizer_config.json").is_file():
            settings = _read_json(path / "tokenizer_config.json")
        if (path / "tokenizer.json").is_file():
            self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        elif (path / "vocab.txt").is_file():
            lower = settings.get("do_lower_case", True)
            self.tokenizer = BertWordPieceTokenizer(
                str(path / "vocab.txt"), lowercase=lower,
                strip_accents=settings.get("strip_accents"),
                handle_chinese_chars=settings.get("tokenize_chinese_chars", True)).\
                _tokenizer
        else:
            raise FileNotFoundError(f"{path} has neither tokenizer.json nor vocab.txt")
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        model_max = settings.get("model_max_length")
        if isinstance(model_max, int) and 0 < model_max < max_len:
            max_len = model_max
        self.max_len = max_len
        tokens = {name: settings.get(f"{name}_token", default) for name, default in
                  (("pad", "[PAD]"), ("mask", "[MASK]"), ("cls", "[CLS]"), ("sep", "[SEP]"))}
        tokens = {k: v["content"] if isinstance(v, dict) else v for k, v in tokens.items()}
        ids = {k: self.tokenizer.token_to_id(v) for k, v in tokens.items()}
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
    modules = _read_json(path / "modules.json")
    if not isinstance(modules, list):
        raise CheckpointError(f"{path}/modules.json must be a list of modules")
    transformer, pooling, normalize = None, "cls", False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        folder = path / module.get("path", "")
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
            raise CheckpointError(f"{path}: the sentence-transformers module {kind!r} is not "
                                  "served (Transformer, Pooling and Normalize are)")
    if transformer is None:
        raise CheckpointError(f"{path}/modules.json has no Transformer module")
    max_seq_length = None
    for name in ("sentence_bert_config.json",):
        if (transformer / name).is_file():
            max_seq_length = _read_json(transformer / name).get("max_seq_length")
    return transformer, pooling, normalize, max_seq_length


def load_huggingface(path, device="cpu", dtype=torch.float32):
    """An Engine for a Hugging Face BERT or sentence-transformers directory."""
    from .engine import Engine

    path = Path(path)
    pooling, normalize, max_seq_length, model_dir = "cls", False, None, path
    if (path / "modules.json").is_file():
        model_dir, pooling, normalize, max_seq_length = _sentence_transformers(path)
    config = config_from_hf(_read_json(model_dir / "config.json"), model_dir)
    packed = pack_hf_state_dict(_read_weights(model_dir), config, model_dir)
    tokenizer = None
    if (model_dir / "tokenizer.json").is_file() or (model_dir / "vocab.txt").is_file():
        limit = config.max_len
        if isinstance(max_seq_length, int) and 0 < max_seq_length < limit:
            limit = max_seq_length
        tokenizer = WordPieceTokenizer(model_dir, limit)
    return Engine(config, packed, device=device, dtype=dtype, tokenizer=tokenizer,
                  pooling=pooling, normalize=normalize, nsp_is_next_label=0)
