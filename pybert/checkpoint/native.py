"""pybert's own checkpoints: a directory with config.json, model.safetensors and vocab.txt.

``config.json`` holds the model's sizes (:class:`BertConfig`) under ``"model"``;
``model.safetensors`` holds the d2l state_dict (the book's key names, float tensors);
``vocab.txt`` holds one token per line in id order (optional). No pickles anywhere: loading a
checkpoint never runs code from it, and pybert.checkpoint.files bounds what reading one can cost.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import BertConfig
from ..d2l import D2L_WEIGHT_MAP, config_from_model, state_dict_problems
from ..engine.weights import pack_weights
from ..tokenization.vocab import BERT_RESERVED_TOKENS, Vocab
from ..tokenization.words import TEXT_FORMATS
from .contents import Checkpoint, WordTokenizerSpec
from .files import MAX_VOCAB_BYTES, CheckpointError, SafetensorsHeader, read_json, read_text

__all__ = ["save", "load_model", "read_native", "read_config", "checkpoint_dir", "CONFIG_NAME",
           "WEIGHTS_NAME", "VOCAB_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
VOCAB_NAME = "vocab.txt"
FORMAT = "pybert-d2l-bert"
FORMAT_VERSION = 1


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a crash mid-write never
    leaves a truncated file under the final name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(net: torch.nn.Module, path, vocab: Vocab | list[str] | None = None,
         extra: dict | None = None) -> Path:
    """Write ``net`` (a d2l-style BERTModel) as a checkpoint directory at ``path``.

    ``vocab`` is a :class:`Vocab` or the list of tokens in id order; ``extra`` is stored in
    config.json under ``"extra"`` (training metadata, for instance).
    """
    config = config_from_model(net)
    if vocab is not None and not isinstance(vocab, Vocab):
        vocab = Vocab.from_tokens(vocab)
    if vocab is not None and len(vocab) != config.vocab_size:
        raise ValueError(f"vocab has {len(vocab)} tokens but the model's vocab_size is "
                         f"{config.vocab_size}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    _atomic_write(path / WEIGHTS_NAME, lambda p: save_file(state, str(p),
                                                           metadata={"format": FORMAT}))
    if vocab is not None:
        _atomic_write(path / VOCAB_NAME, vocab.save)
    else:
        (path / VOCAB_NAME).unlink(missing_ok=True)
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": config.to_dict()}
    if extra:
        document["extra"] = extra
    # config.json last: its presence marks a complete checkpoint.
    _atomic_write(path / CONFIG_NAME,
                  lambda p: p.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8"))
    return path


def checkpoint_dir(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} must be a directory holding {CONFIG_NAME}, "
                              f"{WEIGHTS_NAME} and {VOCAB_NAME}")
    return path


def read_config(path) -> tuple[BertConfig, dict]:
    """The model config and the whole config.json document of a checkpoint directory."""
    path = checkpoint_dir(path)
    config_path = path / CONFIG_NAME
    if not config_path.exists():
        raise FileNotFoundError(f"checkpoint {path} has no {CONFIG_NAME} (an incomplete or "
                                "interrupted save?)")
    document = read_json(config_path, what=CONFIG_NAME)
    if not isinstance(document, dict):
        raise CheckpointError(f"{config_path} is not a pybert checkpoint config: it must hold "
                              "a JSON object")
    if document.get("format") != FORMAT:
        model_type = document.get("model_type")
        if model_type is not None:
            raise CheckpointError(f"{config_path} names a model_type ({str(model_type)[:40]!r}) "
                                  "and a \"format\" that is not pybert's: neither a pybert nor "
                                  "a Hugging Face config")
        raise CheckpointError(f"{config_path} is not a pybert checkpoint config (expected "
                              f"\"format\": \"{FORMAT}\")")
    if document.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{config_path} has format_version "
                              f"{str(document.get('format_version'))[:20]!r}; this pybert reads "
                              f"{FORMAT_VERSION}")
    try:
        config = BertConfig.from_dict(document.get("model"))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{config_path}: {err}") from None
    if not config.is_d2l:
        raise CheckpointError(f"{config_path}: a pybert checkpoint holds d2l's BERT (ReLU "
                              "activations, no embedding LayerNorm, two segments, positions "
                              f"from 0); this config has ffn_activation={config.ffn_activation!r}, "
                              f"mlm_activation={config.mlm_activation!r}, embedding_layer_norm="
                              f"{config.embedding_layer_norm}, type_vocab_size="
                              f"{config.type_vocab_size}, position_offset="
                              f"{config.position_offset}")
    return config, document


def _read_state_dict(path: Path, config: BertConfig) -> dict[str, torch.Tensor]:
    """The checkpoint's d2l state_dict, its names, dtypes and shapes checked against the
    config before any tensor is read."""
    weights_path = path / WEIGHTS_NAME
    if not weights_path.exists():
        raise FileNotFoundError(f"checkpoint {path} has no {WEIGHTS_NAME}")
    header = SafetensorsHeader(weights_path)
    problems = state_dict_problems(header.shapes(), config)
    if not problems:
        header.meta_state()  # refuses dtypes other than float
    if problems:
        raise CheckpointError(f"{weights_path} does not match {CONFIG_NAME}: "
                              + "; ".join(problems[:8])
                              + (f" (and {len(problems) - 8} more)" if len(problems) > 8
                                 else ""))
    state = header.load(header.tensors)
    # The eager model holds float32: a value finite in the file's dtype must be finite there.
    bad = [k for k, v in state.items() if not bool(torch.isfinite(v.float()).all())]
    if bad:
        raise CheckpointError(f"{weights_path}: {', '.join(bad[:5])} hold NaN or infinity "
                              "(in float32)")
    return state


def _read_vocab(path: Path, config: BertConfig) -> Vocab | None:
    vocab_path = path / VOCAB_NAME
    if not vocab_path.exists() and not vocab_path.is_symlink():
        return None
    text = read_text(vocab_path, MAX_VOCAB_BYTES, VOCAB_NAME)
    try:
        vocab = Vocab.from_text(text, str(vocab_path))
    except ValueError as err:
        raise CheckpointError(f"{vocab_path}: {err}") from None
    if len(vocab) != config.vocab_size:
        raise CheckpointError(f"{vocab_path} has {len(vocab)} tokens but {CONFIG_NAME} says "
                              f"vocab_size {config.vocab_size}")
    missing = [t for t in BERT_RESERVED_TOKENS if t not in vocab.token_to_idx]
    if missing:
        raise CheckpointError(f"{vocab_path} lacks the reserved tokens {missing}: without them "
                              "texts cannot be framed (<cls>, <sep>) or masked (<mask>)")
    return vocab


def load_model(path) -> tuple[torch.nn.Module, Vocab | None]:
    """The eager ``BERTModel`` and vocabulary of a checkpoint (for training or as a reference)."""
    path = Path(path)
    config, _ = read_config(path)
    state = _read_state_dict(path, config)
    net = config.build_model()
    net.load_state_dict(state, strict=True)
    return net, _read_vocab(path, config)


def read_native(path) -> Checkpoint:
    """A pybert checkpoint directory read into a :class:`Checkpoint` (d2l's NSP labels: 1
    means "b follows a")."""
    path = checkpoint_dir(path)
    config, document = read_config(path)
    vocab = _read_vocab(path, config)  # before the weights: it is the cheaper check
    tokenizer = None
    if vocab is not None:
        extra = document.get("extra") if isinstance(document.get("extra"), dict) else {}
        text_format = extra.get("text_format", "wikitext")
        if text_format not in TEXT_FORMATS:
            raise CheckpointError(f"{path / CONFIG_NAME}: extra.text_format must be one of "
                                  f"{TEXT_FORMATS}, got {str(text_format)[:40]!r}")
        tokenizer = WordTokenizerSpec(vocab, text_format)
    state = _read_state_dict(path, config)
    return Checkpoint(path=path, format="pybert", config=config,
                      weights=pack_weights(state, D2L_WEIGHT_MAP, config, str(path)),
                      tokenizer=tokenizer, nsp_is_next_label=1)
