"""sentence-transformers model directories: a ``modules.json`` naming a Transformer module (a
Hugging Face BERT folder), a Pooling module (CLS or mean over real tokens) and an optional
Normalize module; the Transformer's ``sentence_bert_config.json`` may cap the length.

Both on-disk styles are read: the one of sentence-transformers up to 5 (module types
``sentence_transformers.models.*``; Pooling's config as ``pooling_mode_<name>`` flags) and the
one of 6 (module types under ``sentence_transformers.base.modules``; ``"pooling_mode":
"mean"``). Modules are recognised by their class name, whatever package holds them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .contents import Checkpoint
from .files import CheckpointError, read_json_of
from .huggingface import read_huggingface

__all__ = ["is_sentence_transformers_dir", "read_sentence_transformers"]

POOLINGS = {"cls": "cls", "mean": "mean", "pooling_mode_cls_token": "cls",
            "pooling_mode_mean_tokens": "mean"}


def is_sentence_transformers_dir(path: Path) -> bool:
    return (path / "modules.json").exists()


def _pooling(folder: Path) -> str:
    """'cls' or 'mean' from a Pooling module's config.json, in either style."""
    settings = read_json_of(folder / "config.json")
    if "pooling_mode" in settings:  # sentence-transformers 6: one name
        modes = [settings["pooling_mode"]] if isinstance(settings["pooling_mode"], str) else \
            [repr(settings["pooling_mode"])[:40]]
    else:  # up to 5: a flag per mode, exactly one set
        modes = [k for k, v in settings.items() if k.startswith("pooling_mode") and v]
    if len(modes) != 1 or modes[0] not in POOLINGS:
        raise CheckpointError(f"{folder}: pooling {modes} is not served (CLS or mean over "
                              "tokens)")
    return POOLINGS[modes[0]]


def _module_folder(path: Path, module) -> Path:
    if not isinstance(module, dict) or not isinstance(module.get("path", ""), str):
        raise CheckpointError(f"{path}/modules.json: each module must be an object with a "
                              "\"path\" string")
    folder = path / module.get("path", "")
    if folder.resolve() != path.resolve() and path.resolve() not in folder.resolve().parents:
        raise CheckpointError(f"{path}/modules.json: module path {module['path']!r} leaves "
                              "the model directory")
    return folder


def read_sentence_transformers(path) -> Checkpoint:
    """A sentence-transformers directory read into a :class:`Checkpoint`: its Transformer's
    Hugging Face BERT, with the pooling, normalisation and length the other modules set."""
    path = Path(path)
    transformer, pooling, normalize = None, "cls", False
    for module in read_json_of(path / "modules.json", list):
        folder = _module_folder(path, module)
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Transformer":
            transformer = folder
        elif kind == "Pooling":
            pooling = _pooling(folder)
        elif kind == "Normalize":
            normalize = True
        else:
            raise CheckpointError(f"{path}: the sentence-transformers module {kind[:40]!r} is "
                                  "not served (Transformer, Pooling and Normalize are)")
    if transformer is None:
        raise CheckpointError(f"{path}/modules.json has no Transformer module")
    max_seq_length = None
    if (transformer / "sentence_bert_config.json").exists():
        max_seq_length = read_json_of(transformer / "sentence_bert_config.json").get(
            "max_seq_length")
    checkpoint = read_huggingface(transformer, max_seq_length)
    return replace(checkpoint, path=path, format="sentence-transformers", pooling=pooling,
                   normalize=normalize)
