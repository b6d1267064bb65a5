"""Reading the files of a checkpoint someone else made, defensively.

What a checkpoint file can do to you is bounded here (docs/security.md says it for users):
- only regular files are read: a symlink is followed (Hugging Face's cache is made of them),
  but it must end at a regular file, never a device, a FIFO or a socket (``/dev/zero`` would
  be read forever, a FIFO would block forever);
- each kind of file has a size cap, checked on the open file before reading it;
- JSON is parsed with its nesting bounded (a deep document gives an error, not a crash);
- a safetensors file's header is read and checked (size, names, dtypes, shapes, offsets)
  before any tensor data, and only the tensors asked for are read;
- nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from pathlib import Path

import torch

__all__ = ["CheckpointError", "read_file", "read_text", "read_json", "read_json_of",
           "fingerprint", "SafetensorsHeader", "MAX_CONFIG_BYTES", "MAX_TOKENIZER_BYTES",
           "MAX_VOCAB_BYTES", "MAX_SAFETENSORS_HEADER_BYTES"]

# The caps keep what refusing a file costs small (peak memory well under 64 MB) while leaving
# room many times over for real BERT checkpoints.
MAX_CONFIG_BYTES = 1 << 20            # config.json and the other small JSON files (~1 KB)
MAX_TOKENIZER_BYTES = 64 << 20        # tokenizer.json (XLM-RoBERTa's, 250k pieces: 17 MB)
MAX_VOCAB_BYTES = 4 << 20             # vocab.txt (multilingual BERT's: 0.9 MB)
MAX_SAFETENSORS_HEADER_BYTES = 2 << 20  # BERT-large's header: ~50 KB for ~400 tensors
MAX_TENSORS = 20_000

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16}


class CheckpointError(ValueError):
    """A checkpoint directory that is incomplete, corrupt or does not fit its config."""


def _open_regular(path: Path, what: str) -> tuple[int, int]:
    """(descriptor, size) of ``path`` opened for reading, if it is a regular file."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot open {what}: {err.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CheckpointError(f"{path}: {what} must be a regular file (a symlink to one is "
                              "fine), not a device, FIFO, socket or directory")
    return fd, info.st_size


def read_file(path, max_bytes: int, what: str = "the file") -> bytes:
    """The bytes of regular file ``path`` if it holds at most ``max_bytes``."""
    path = Path(path)
    fd, size = _open_regular(path, what)
    with os.fdopen(fd, "rb") as f:
        if size > max_bytes:
            raise CheckpointError(f"{path}: {what} is {size} bytes, more than the "
                                  f"{max_bytes} a checkpoint's {what} may have")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while it was read
        raise CheckpointError(f"{path}: {what} is more than {max_bytes} bytes")
    return data


def read_text(path, max_bytes: int, what: str = "the file") -> str:
    """The UTF-8 text of regular file ``path`` if it holds at most ``max_bytes``."""
    data = read_file(path, max_bytes, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path} is not UTF-8 text: {err}") from None


def read_json(path, max_bytes: int = MAX_CONFIG_BYTES, what: str = "the JSON file"):
    """The JSON value of ``path`` (a regular file of at most ``max_bytes``)."""
    text = read_text(path, max_bytes, what)
    try:
        return json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{path} is not valid JSON: nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, and integers beyond Python's digit limit
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None


def fingerprint(path) -> str:
    """The sha256 of a checkpoint's content: its regular files' names (relative to it) and
    bytes, in name order. The same checkpoint gives the same digest wherever it lies and
    however its path is spelled; a checkpoint replaced at the same path gives another (what a
    resumed batch job compares, so that it never mixes two models' rows)."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        name = file.relative_to(root).as_posix()
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def read_json_of(path: Path, kind: type = dict):
    """The JSON object (``kind=list``: array) of a small file named by its own file name in
    errors; CheckpointError when it holds another kind of value."""
    value = read_json(path, what=path.name)
    if not isinstance(value, kind):
        raise CheckpointError(f"{path} must hold a JSON {'object' if kind is dict else 'list'}")
    return value


class SafetensorsHeader:
    """The checked header of a safetensors file: {name: (dtype, shape)} of its tensors.

    Checked before any data is read: the header size, that it is a JSON object of tensor
    entries with known float dtypes, integer shapes and data offsets that match the shapes and
    lie inside the file."""

    def __init__(self, path):
        self.path = Path(path)
        fd, size = _open_regular(self.path, "the weights file")
        with os.fdopen(fd, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise self._unreadable("it is shorter than its header")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_SAFETENSORS_HEADER_BYTES or 8 + length > size:
                raise self._unreadable(f"the header claims {length} bytes (the file has {size}; "
                                       f"at most {MAX_SAFETENSORS_HEADER_BYTES} are read)")
            raw = f.read(length)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise self._unreadable(f"the header is not valid JSON: {str(err)[:200]}") from None
        if not isinstance(header, dict):
            raise self._unreadable("the header is not a JSON object")
        header.pop("__metadata__", None)
        if len(header) > MAX_TENSORS:
            raise self._unreadable(f"it declares {len(header)} tensors, more than {MAX_TENSORS}")
        data_size = size - 8 - length
        self.tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
        for name, entry in header.items():
            self.tensors[name] = self._checked_entry(name, entry, data_size)

    def _unreadable(self, why: str) -> CheckpointError:
        return CheckpointError(f"unreadable safetensors weights: {self.path} is not a readable "
                               f"safetensors file: {why}")

    def _checked_entry(self, name: str, entry, data_size: int):
        where = f"tensor {name[:100]!r}"
        if not isinstance(entry, dict):
            raise self._unreadable(f"{where}: its header entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str):
            raise self._unreadable(f"{where}: no dtype")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                                and 0 <= d < 1 << 40 for d in shape)):
            raise self._unreadable(f"{where}: shape {str(shape)[:80]} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_size):
            raise self._unreadable(f"{where}: data_offsets {str(offsets)[:80]} lie outside the "
                                   f"file's {data_size} data bytes (a truncated file?)")
        if dtype in SAFETENSORS_DTYPES:
            elements = 1
            for d in shape:
                elements *= d
            itemsize = SAFETENSORS_DTYPES[dtype].itemsize
            if elements * itemsize != offsets[1] - offsets[0]:
                raise self._unreadable(f"{where}: shape {shape} ({dtype}) needs "
                                       f"{elements * itemsize} bytes, its offsets give "
                                       f"{offsets[1] - offsets[0]}")
        return dtype, tuple(shape)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: shape for name, (_, shape) in self.tensors.items()}

    def meta_state(self, names=None) -> dict[str, torch.Tensor]:
        """{name: a meta tensor (shape and dtype, no data)} of float tensors: what the checks
        of names and shapes run on before any data is read. Other dtypes are refused."""
        state = {}
        for name in self.tensors if names is None else names:
            dtype, shape = self.tensors[name]
            if dtype not in SAFETENSORS_DTYPES:
                raise CheckpointError(f"{self.path}: tensor {name!r} is {dtype}, not floating "
                                      f"point of a served width ({sorted(SAFETENSORS_DTYPES)})")
            state[name] = torch.empty(shape, dtype=SAFETENSORS_DTYPES[dtype], device="meta")
        return state

    def load(self, names) -> dict[str, torch.Tensor]:
        """The tensors ``names`` (already checked), read from the file."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), framework="pt") as f:
                return {name: f.get_tensor(name) for name in names}
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise self._unreadable(str(err)[:300]) from None
