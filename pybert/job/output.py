"""Row-at-a-time writers for the batch job's outputs: .npy, .safetensors, .parquet.

Each writes (rows, dim) float32 rows (embeddings, or a classifier's scores) into a *partial*
file known to hold ``rows`` rows, chunk by chunk and in any order of chunks, can be reopened to
continue after an interruption, and only ``finish`` puts the result under its final name (an
atomic rename), so a file under the final name is always complete. Sparse vectors (a row's
non-zero ids and weights, of any count) go to .parquet only.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np

from ..tasks import TASKS
from .files import open_existing, open_new

__all__ = ["open_writer", "check_output", "FORMATS"]

FORMATS = (".npy", ".safetensors", ".parquet")
# The name of the rows in each output (the .safetensors tensor, the .parquet column) is the
# job's task's (pybert.tasks: Task.names); sparse rows are written as "indices" and "values".


def _reserve(file, size: int) -> None:
    """Give ``file`` ``size`` bytes of real disk blocks now, so that a full disk is found
    before the work rather than in the middle of a write (a sparse file would fail later, and
    a memory map of one would end the process with SIGBUS)."""
    file.flush()
    try:
        os.posix_fallocate(file.fileno(), 0, size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        file.truncate(size)  # a file system without fallocate: writes report a full disk


class _RowFile:
    """A file of a header followed by (rows, dim) little-endian float32 rows, written in place
    with plain writes (errors are OSErrors, never signals)."""

    def _open(self, partial: Path, header: bytes, rows: int, dim: int, resume: bool) -> None:
        self.row_bytes = dim * 4
        self.data_start = len(header)
        total = self.data_start + rows * self.row_bytes
        if resume:
            self.file = open_existing(partial)
            if os.path.getsize(partial) != total or self.file.read(len(header)) != header:
                self.file.close()
                raise ValueError(f"{partial} is not the partial output of this job")
        else:
            self.file = open_new(partial)
            self.file.write(header)
            _reserve(self.file, total)
        self.partial = partial

    def write(self, start: int, block: np.ndarray) -> None:
        self.file.seek(self.data_start + start * self.row_bytes)
        self.file.write(np.ascontiguousarray(block, dtype="<f4").tobytes())

    def flush(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def finish(self, final: Path) -> None:
        self.flush()
        self.file.close()
        os.replace(self.partial, final)

    def close(self) -> None:
        """Let go of the partial file (kept for a resume) without finishing it."""
        self.file.close()


class NpyWriter(_RowFile):
    """A .npy of shape (rows, dim) float32."""

    def __init__(self, partial: Path, rows: int, dim: int, resume: bool, metadata: dict,
                 task: str = "embed"):
        import io

        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
        self._open(partial, header.getvalue(), rows, dim, resume)


class SafetensorsWriter(_RowFile):
    """A .safetensors file with one F32 tensor ("embeddings" or "scores") (rows, dim): the header
    is written first (the shape is known), then rows land at their offsets."""

    def __init__(self, partial: Path, rows: int, dim: int, resume: bool, metadata: dict,
                 task: str = "embed"):
        header = {TASKS[task].names[0]: {"dtype": "F32", "shape": [rows, dim],
                                "data_offsets": [0, rows * dim * 4]},
                  "__metadata__": {k: str(v) for k, v in metadata.items()}}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the format wants the data 8-byte aligned
        self._open(partial, struct.pack("<Q", len(text)) + text, rows, dim, resume)


class ParquetWriter:
    """A .parquet with columns "row" (int64) and "embedding" or "scores" (fixed-size list of
    float32), or, for sparse vectors, "indices" (list of int64) and "values" (list of float32).
    Chunks go to part files in a folder, merged in row order by ``finish``."""

    def __init__(self, partial: Path, rows: int, dim: int | None, resume: bool, metadata: dict,
                 task: str = "embed"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError("writing .parquet needs pyarrow (pip install pyarrow); .npy and "
                             ".safetensors need nothing more") from None
        if partial.is_symlink():
            raise ValueError(f"{partial} is a symbolic link; a job writes its own files and "
                             "never through a link: remove it")
        if not resume and partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        self.partial, self.dim, self.metadata, self.task = partial, dim, metadata, task

    def _table(self, start: int, block):
        import pyarrow as pa

        rows = pa.array(np.arange(start, start + len(block), dtype=np.int64))
        if self.task == "sparse":  # a list of SparseVector
            return pa.table({
                "row": rows,
                "indices": pa.array([v.indices for v in block], pa.list_(pa.int64())),
                "values": pa.array([v.values for v in block], pa.list_(pa.float32()))})
        values = pa.array(np.ascontiguousarray(block, dtype=np.float32).reshape(-1))
        return pa.table({"row": rows,
                         TASKS[self.task].names[1]: pa.FixedSizeListArray.from_arrays(values,
                                                                                self.dim)})

    def write(self, start: int, block) -> None:
        import pyarrow.parquet as pq

        tmp = self.partial / f".part-{start:012d}.tmp"
        pq.write_table(self._table(start, block), tmp)
        os.replace(tmp, self.partial / f"part-{start:012d}.parquet")

    def flush(self) -> None:
        pass  # each part is complete once renamed

    def close(self) -> None:
        pass  # no file stays open between parts

    def finish(self, final: Path) -> None:
        import pyarrow.parquet as pq

        parts = sorted(self.partial.glob("part-*.parquet"))
        tmp = final.with_name(f".{final.name}.tmp")
        writer = None
        for part in parts:
            table = pq.read_table(part)
            if writer is None:
                schema = table.schema.with_metadata(
                    {k: str(v) for k, v in self.metadata.items()})
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(table.replace_schema_metadata(writer.schema.metadata))
        if writer is not None:
            writer.close()
        os.replace(tmp, final)
        shutil.rmtree(self.partial)


def open_writer(final: Path, rows: int, dim: int | None, resume: bool, metadata: dict,
                task: str = "embed"):
    """The writer for ``final``'s suffix, on its partial path ``<final>.partial``, of the rows
    of ``task`` ("embed", "classify": (rows, dim); "sparse": .parquet only)."""
    check_output(final, task)
    kinds = {".npy": NpyWriter, ".safetensors": SafetensorsWriter, ".parquet": ParquetWriter}
    return kinds[final.suffix](partial_path(final), rows, dim, resume, metadata, task)


def check_output(final: Path, task: str = "embed") -> None:
    """ValueError unless ``final``'s suffix can hold the rows of ``task``."""
    if final.suffix not in FORMATS:
        raise ValueError(f"--output must end in one of {FORMATS}, got {final.name}")
    if task == "sparse" and final.suffix != ".parquet":
        raise ValueError(f"sparse vectors (--task sparse) are written to .parquet (columns "
                         f"row, indices, values), got {final.name}")


def partial_path(final: Path) -> Path:
    return final.with_name(final.name + ".partial")
