"""Checkpoints: a directory with config.json, model.safetensors and vocab.txt.

``config.json`` holds the model's sizes (:class:`BertConfig`) under ``"model"``;
``model.safetensors`` holds the d2l state_dict (the book's key names, float tensors);
``vocab.txt`` holds one token per line in id order (optional). No pickles anywhere: loading a
checkpoint never runs code from it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import BertConfig, config_from_model, state_dict_problems
from .vocab import Vocab

__all__ = ["CheckpointError", "save", "load", "load_model", "CONFIG_NAME", "WEIGHTS_NAME",
           "VOCAB_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
VOCAB_NAME = "vocab.txt"
FORMAT = "pybert-d2l-bert"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint directory that is incomplete, corrupt or does not fit its config."""


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


def read_config(path) -> tuple[BertConfig, dict]:
    """The model config and the whole config.json document of a checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} must be a directory holding {CONFIG_NAME}, "
                              f"{WEIGHTS_NAME} and {VOCAB_NAME}")
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no {CONFIG_NAME} (an incomplete or "
                                "interrupted save?)")
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path} is not valid JSON: {err}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{config_path} is not a pybert checkpoint config (expected "
                              f"\"format\": \"{FORMAT}\")")
    if document.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{config_path} has format_version "
                              f"{document.get('format_version')!r}; this pybert reads "
                              f"{FORMAT_VERSION}")
    try:
        config = BertConfig.from_dict(document.get("model"))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{config_path}: {err}") from None
    return config, document


def _read_state_dict(path: Path, config: BertConfig) -> dict[str, torch.Tensor]:
    weights_path = path / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file: {err}") \
            from None
    problems = state_dict_problems(state, config)
    problems += [f"{k} is {state[k].dtype}, not floating point"
                 for k in state if not state[k].is_floating_point()]
    problems += [f"{k} holds NaN or infinity" for k in state
                 if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())]
    if problems:
        raise CheckpointError(f"{weights_path} does not match {CONFIG_NAME}: "
                              + "; ".join(problems[:8])
                              + (f" (and {len(problems) - 8} more)" if len(problems) > 8
                                 else ""))
    return state


def _read_vocab(path: Path, config: BertConfig) -> Vocab | None:
    vocab_path = path / VOCAB_NAME
    if not vocab_path.exists():
        return None
    try:
        vocab = Vocab.load(vocab_path)
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{vocab_path}: {err}") from None
    if len(vocab) != config.vocab_size:
        raise CheckpointError(f"{vocab_path} has {len(vocab)} tokens but {CONFIG_NAME} says "
                              f"vocab_size {config.vocab_size}")
    return vocab


def load_model(path) -> tuple[torch.nn.Module, Vocab | None]:
    """The eager ``BERTModel`` and vocabulary of a checkpoint (for training or as a reference)."""
    path = Path(path)
    config, _ = read_config(path)
    state = _read_state_dict(path, config)
    net = config.build_model()
    net.load_state_dict(state, strict=True)
    return net, _read_vocab(path, config)


def load(path, device="cpu", dtype: torch.dtype = torch.float32):
    """An :class:`~pybert.Engine` serving the checkpoint at ``path``: a pybert checkpoint, a
    Hugging Face BERT directory or a sentence-transformers model directory."""
    from .engine import Engine
    from .huggingface import is_huggingface_dir, load_huggingface

    path = Path(path)
    if path.is_dir() and is_huggingface_dir(path):
        return load_huggingface(path, device=device, dtype=dtype)
    config, document = read_config(path)
    state = _read_state_dict(path, config)
    text_format = (document.get("extra") or {}).get("text_format", "wikitext")
    return Engine.from_state_dict(state, config, device=device, dtype=dtype,
                                  vocab=_read_vocab(path, config), text_format=text_format)
