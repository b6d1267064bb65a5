"""A model named by its Hugging Face hub id, made into a local directory.

``locate("sentence-transformers/all-MiniLM-L6-v2")`` is the snapshot folder of that model in
huggingface_hub's own cache (``HF_HOME`` / ``HF_HUB_CACHE``), downloaded first where it is not
there (with huggingface_hub's progress bars; ``HF_TOKEN`` for gated or private models;
``HF_HUB_OFFLINE=1`` to use the cache alone). Only the files pybert reads are fetched: the
JSON configs, the tokenizer's files and safetensors weights, of the model folder and of the
sentence-transformers module folders its modules.json names, and BGE-M3's two small head
files (PyTorch files, read by torch's tensors-only loader: pybert.checkpoint.bge_m3); no
other pickle. A local path that exists always wins over an id.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .files import read_json_of

__all__ = ["locate", "is_hub_id", "MODEL_FILES"]

# What pybert reads from a model folder (pybert's own, Hugging Face's, sentence-transformers').
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
               "modules.json", "config_sentence_transformers.json", "sentence_bert_config.json",
               "sparse_linear.pt", "colbert_linear.pt")
# owner/name, as the hub spells repository ids (letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a hub model id (owner/name)."""
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name


def locate(model, revision: str | None = None) -> Path:
    """The local directory of ``model``: a path that exists as it is, else a hub id resolved
    through huggingface_hub's cache (at ``revision``: a branch, tag or commit; default main).
    Raises FileNotFoundError naming the id and the cause (not on the hub, no such revision,
    not cached while offline, no connection) and PermissionError for a gated or private
    model without a token."""
    path = Path(os.fspath(model)).expanduser()
    if path.exists():
        return path
    name = os.fspath(model)
    if not isinstance(name, str) or not is_hub_id(name):
        raise FileNotFoundError(f"checkpoint {name} does not exist (a local directory, or a "
                                "Hugging Face hub id such as "
                                "sentence-transformers/all-MiniLM-L6-v2)")
    if revision is not None and not isinstance(revision, str):
        raise TypeError(f"revision must be a str, got {type(revision).__name__}")
    return _download(name, revision)


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, \
            LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:  # pragma: no cover (a dependency of pybert and of tokenizers)
        raise FileNotFoundError(f"checkpoint {repo_id} is not a local directory, and loading "
                                "a model by its hub id needs huggingface_hub") from None
    at = f" at revision {revision!r}" if revision else ""
    try:
        folder = Path(snapshot_download(repo_id, revision=revision,
                                        allow_patterns=list(MODEL_FILES)))
        more = _module_files(folder)
        if more:
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=more))
    except GatedRepoError:
        raise PermissionError(f"{repo_id} is a gated model: accept its terms on its hub page, "
                              "then set HF_TOKEN (or log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{repo_id} has no revision {revision!r} on the Hugging Face "
                                "hub") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{repo_id} is not a model on the Hugging Face hub (or it is "
                                "private: set HF_TOKEN), nor a local directory") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else \
            "the hub could not be reached"
        raise FileNotFoundError(f"{repo_id}{at} is not in the Hugging Face cache "
                                f"({constants.HF_HUB_CACHE}) and {why}: download it once "
                                "with a connection, or point HF_HUB_CACHE at a cache that "
                                "holds it") from None
    except HfHubHTTPError as err:
        raise FileNotFoundError(f"{repo_id}{at}: the Hugging Face hub answered: "
                                f"{str(err).splitlines()[0][:200]}") from None
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{repo_id}{at} has no config.json on the hub: not a model "
                                "pybert can serve")
    return folder


def _module_files(folder: Path) -> list[str]:
    """The further files of a downloaded model folder: its weight shards (named by
    model.safetensors.index.json) and the sentence-transformers module folders' configs,
    tokenizer files and safetensors weights (named by modules.json)."""
    patterns = []
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json_of(index).get("weight_map")
        if isinstance(weight_map, dict):
            patterns += sorted({v for v in weight_map.values()
                                if isinstance(v, str) and Path(v).name == v})
    if (folder / "modules.json").exists():
        for module in read_json_of(folder / "modules.json", list):
            sub = module.get("path") if isinstance(module, dict) else None
            if isinstance(sub, str) and sub and ".." not in Path(sub).parts:
                patterns += [f"{sub}/{name}" for name in MODEL_FILES]
    return patterns
