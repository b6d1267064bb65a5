"""The batch job behind ``pybert encode``: a text file in, an embedding file out (or a
classifier's scores, or sparse vectors), resumable.

Rows are read a chunk at a time, run through a :class:`~pybert.text.TextModel`'s task and
written in input order; after each chunk is durably written the job records how many rows are done, so a
run that is interrupted (Ctrl-C, a kill, a crash, a full disk) continues from there when run
again with the same arguments. Only a finished job has the output's final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import BATCH_TOKENS, check_int
from ..text import POOLINGS, text_model_of
from ..tasks import JOB_TASKS, TASKS, model_task
from ..tasks import task as task_of
from ..tokenization import TruncationCount, check_text, check_truncation
from .files import output_lock, write_text_replacing
from .output import check_output, open_writer, partial_path

__all__ = ["read_texts", "parse_rows", "count_rows", "row_places", "run_encode_job",
           "MAX_ROW_BYTES",
           "TEXT_INPUT_SUFFIXES", "task_width"]

TEXT_INPUT_SUFFIXES = (".txt", ".jsonl")
MAX_ROW_BYTES = 16 << 20  # a row longer than this is refused (BERT reads 512 tokens at most)


def _lines(path: Path, offset: int = 0,
           first_line: int = 1) -> Iterator[tuple[int, bytes, int]]:
    """(line number, bytes, byte offset) of each line of ``path`` from byte ``offset`` (where
    line ``first_line`` starts). Lines end at ``\\n`` (``\\r\\n`` too) and nowhere else: a
    lone ``\\r`` inside a line is part of its text, not a row break."""
    with open(path, "rb") as f:
        f.seek(offset)
        for number in range(first_line, 1 << 62):
            at = f.tell()
            line = f.readline(MAX_ROW_BYTES + 2)
            if not line:
                return
            if len(line) > MAX_ROW_BYTES + 1 and not line.endswith(b"\n"):
                raise ValueError(f"{path}:{number}: the row is longer than {MAX_ROW_BYTES} "
                                 "bytes")
            if line.endswith(b"\n"):
                line = line[:-1]
                if line.endswith(b"\r"):
                    line = line[:-1]
            yield number, line, at


def _is_row(line: bytes, jsonl: bool) -> bool:
    return not jsonl or bool(line.strip())


def parse_rows(path, start: int = 0, stop: int | None = None,
               place: tuple[int, int, int] | None = None) -> Iterator[tuple]:
    """(row, text or None, error or None, id or None) for rows ``start`` to ``stop`` of a .txt
    or .jsonl file (see read_texts): a row that cannot be read gives its error, which names the
    file and line, instead of a text; a .jsonl object's "id" field comes with its text.
    ``place`` (row, byte offset, line number; from row_places) starts the reading there
    rather than at the top of the file."""
    path = Path(path)
    jsonl = path.suffix == ".jsonl"
    first_row, offset, first_line = place or (0, 0, 1)
    row = first_row - 1
    for number, raw, _ in _lines(path, offset, first_line):
        if not _is_row(raw, jsonl):
            continue
        row += 1
        if row < start:
            continue
        if stop is not None and row >= stop:
            return
        try:
            yield (row, *_parse_row(raw, jsonl, f"{path}:{number}"))
        except ValueError as err:
            yield row, None, err, None


def _parse_row(raw: bytes, jsonl: bool, where: str) -> tuple:
    """(text, None, id) of one row, or ValueError naming ``where``."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{where}: not valid UTF-8 (byte {err.start})") from None
    if not jsonl:
        return (tuple(line.split("\t", 1)) if "\t" in line else line), None, None
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{where}: not valid JSON: {err}") from None
    row_id = value.get("id") if isinstance(value, dict) else None
    text = _jsonl_text(value, where)
    for part in (text,) if isinstance(text, str) else text:
        check_text(part, where)
    return text, None, row_id


def read_texts(path, skip: int = 0) -> Iterator:
    """The rows of a .txt (one text per line; a tab separates a pair) or .jsonl file (each line
    a string, a [text_a, text_b] pair, or an object with "text" and optionally "text_pair",
    or "text_a" and "text_b"), from row ``skip`` on. Blank .jsonl lines are not rows. A bad
    row (invalid UTF-8, invalid JSON, a wrong shape) raises ValueError naming file and line."""
    for _, text, error, _ in parse_rows(path, start=skip):
        if error is not None:
            raise error
        yield text


def _jsonl_text(value, where: str):
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return tuple(value)
    if isinstance(value, dict):
        if isinstance(value.get("text"), str):
            pair = value.get("text_pair")
            return value["text"] if pair is None else (value["text"], _str(pair, where))
        if isinstance(value.get("text_a"), str):
            return (value["text_a"], _str(value.get("text_b"), where))
    raise ValueError(f"{where}: expected a string, a [text_a, text_b] pair or an object with "
                     "\"text\" (and \"text_pair\") or \"text_a\" and \"text_b\"")


def _str(value, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: the second text of a pair must be a string")
    return value


def row_places(path, every: int) -> tuple[int, list[tuple[int, int, int]]]:
    """(rows of ``path``, the place (row, byte offset, line number) of every ``every``-th
    row): one pass over the file, so that a shard of its rows is read from its place."""
    jsonl = Path(path).suffix == ".jsonl"
    rows, places = 0, []
    for number, line, offset in _lines(Path(path)):
        if _is_row(line, jsonl):
            if rows % every == 0:
                places.append((rows, offset, number))
            rows += 1
    return rows, places


def count_rows(path) -> int:
    """The rows of ``path`` as read_texts counts them, without parsing them."""
    jsonl = Path(path).suffix == ".jsonl"
    return sum(1 for _, line, _ in _lines(Path(path)) if _is_row(line, jsonl))


def _check_paths(input_path: Path, output_path: Path, overwrite: bool, task: str) -> None:
    """Everything about the two paths that can be known before any work."""
    if not input_path.exists():
        raise FileNotFoundError(f"--input {input_path} does not exist")
    if not input_path.is_file():
        raise ValueError(f"--input {input_path} must be a regular file")
    if input_path.suffix not in TEXT_INPUT_SUFFIXES:
        raise ValueError(f"--input must be a .txt or .jsonl file, got {input_path.name}")
    check_output(output_path, task)
    if output_path.is_dir():
        raise ValueError(f"--output {output_path} is a directory; name a file in it")
    if not output_path.parent.is_dir():
        raise FileNotFoundError(f"--output's folder {output_path.parent} does not exist")
    if not os.access(output_path.parent, os.W_OK):
        raise PermissionError(f"--output's folder {output_path.parent} is not writable")
    if output_path.exists() and not overwrite:
        raise FileExistsError(f"{output_path} exists (a finished job); pass --overwrite to "
                              "replace it")


@contextlib.contextmanager
def _writing(output_path: Path, rows_done: int):
    """Turns a failure to write (a full disk, a read-only folder) into an OSError that says
    what happened and that the job can be resumed."""
    try:
        yield
    except OSError as err:
        raise OSError(err.errno, f"cannot write {output_path}: {err.strerror or err}. The "
                      f"{rows_done} rows done so far are kept: free space or fix the folder, "
                      "then run the same command again to continue") from err


def _job_identity(model, input_path: Path, model_id: str, pooling: str, truncation: str,
                  width: int | None, options: dict) -> dict:
    """What makes a job the same job: a rerun continues a partial output only where these all
    agree (the input file as it was, the model and every option that changes a row)."""
    stat = input_path.stat()
    job = {"input": str(input_path.resolve()), "input_bytes": stat.st_size,
           "input_mtime_ns": stat.st_mtime_ns, "model": model_id, "pooling": pooling,
           "normalize": model.normalize, "truncation": truncation, "dim": width,
           "engine_dtype": str(model.engine.dtype).replace("torch.", "")}
    if model.engine.quantize:  # absent otherwise: older jobs still resume
        job["engine_quantize"] = model.engine.quantize
    # Likewise: the task and its options only where they differ from an embedding job's.
    job.update({k: v for k, v in options.items() if v not in (None, False, "embed")})
    return job


def _resume_point(job: dict, input_path: Path, output_path: Path, progress_path: Path,
                  overwrite: bool) -> tuple[int, int, bool]:
    """(rows in the input, rows already done, whether a partial output is resumed)."""
    if not (progress_path.exists() and partial_path(output_path).exists()) or overwrite:
        return count_rows(input_path), 0, False
    try:
        saved = json.loads(progress_path.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not an object")
    except (ValueError, OSError) as err:
        raise ValueError(f"{progress_path} is unreadable ({err}); pass --overwrite to start "
                         "again") from None
    if {k: saved.get(k) for k in job} != job:
        raise ValueError(f"{partial_path(output_path)} belongs to a different job (other "
                         "input, model or options); pass --overwrite to start again")
    return saved["rows"], saved["done"], True


def task_width(model, task: str, dimensions: int | None = None,
               pooling: str | None = None) -> int | None:
    """The values per output row of ``task`` (None: sparse rows vary); ValueError if the
    model cannot run it, or not with these options."""
    task_of(task, JOB_TASKS)  # a job's task by name
    entry = TASKS[model_task(model, task)]
    if not entry.available(model):
        raise ValueError(f"--task {task} needs a model with {entry.needs}")
    options = {k: v for k, v in (("dimensions", dimensions), ("pooling", pooling))
               if v is not None}
    return entry.width(model, entry.check(model, options))


def run_encode_job(model, input_path, output_path, model_id: str, pooling: str | None = None,
                   batch_tokens: int = BATCH_TOKENS, chunk_size: int = 4096,
                   truncation: str = "warn",
                   overwrite: bool = False, progress: bool = True, *, task: str = "embed",
                   prompt_name: str | None = None, dimensions: int | None = None,
                   raw_scores: bool = False) -> dict:
    """Run ``task`` on every row of ``input_path`` into ``output_path``, in input order,
    streaming a chunk at a time, with ``model`` (a TextModel, or an Engine loaded with one):
    "embed" (vectors: .npy, .safetensors, .parquet; ``prompt_name``, ``dimensions``),
    "classify" (the classifier's scores, or logits with ``raw_scores``; same formats) or
    "sparse" (SPLADE vectors: .parquet with columns row, indices, values).

    The output is built as ``<output>.partial`` with ``<output>.progress.json`` recording the
    rows done after each chunk is durably written; run the same job again after an
    interruption and it continues from there. Only a finished job has ``output_path``. A
    failure to write (a full disk, a read-only folder) raises OSError saying so; the rows done
    are kept. Only one job at a time may write an output (``<output>.lock``)."""
    model = text_model_of(model)
    pooling = model.pooling_of(pooling) if task == "embed" else pooling or model.pooling
    if pooling not in POOLINGS[:2]:
        raise ValueError(f"a batch job pools each text to one vector: pooling must be cls or "
                         f"mean, got {pooling!r}")
    check_int(batch_tokens, "batch_tokens")
    check_int(chunk_size, "chunk_size")
    check_truncation(truncation)
    width = task_width(model, task, dimensions, pooling if task == "embed" else None)
    model.prompted([], prompt_name)  # an unknown prompt name fails before any work
    input_path, output_path = Path(input_path), Path(output_path)
    _check_paths(input_path, output_path, overwrite, task)
    options = {"task": task, "prompt_name": prompt_name, "dimensions": dimensions,
               "raw_scores": raw_scores}
    run = _JobRun(model, input_path, output_path, task, width,
                  _job_identity(model, input_path, model_id, pooling, truncation, width,
                                options),
                  dict(pooling=pooling if task == "embed" else None,
                       batch_tokens=batch_tokens, chunk_size=chunk_size,
                       truncation=truncation, prompt_name=prompt_name, dimensions=dimensions,
                       raw_scores=raw_scores))
    with output_lock(output_path):  # a second job on this output refuses at once
        return run.run(overwrite, progress)


@dataclass
class _JobRun:
    """One run of a batch job, its options checked: from the resume point to the end."""

    model: object
    input_path: Path
    output_path: Path
    task: str
    width: int | None
    identity: dict       # what makes the job the same job (_job_identity)
    options: dict        # TextModel.iter_task's

    @property
    def progress_path(self) -> Path:
        return self.output_path.with_name(self.output_path.name + ".progress.json")

    def run(self, overwrite: bool, progress: bool) -> dict:
        from tqdm import tqdm

        rows, done, resume = _resume_point(self.identity, self.input_path, self.output_path,
                                           self.progress_path, overwrite)
        bar = tqdm(total=rows, initial=done, unit="rows", disable=not progress,
                   dynamic_ncols=True, smoothing=0.1)
        truncated = TruncationCount()
        with contextlib.closing(bar):
            with _writing(self.output_path, done):
                writer = open_writer(self.output_path, rows, self.width, resume,
                                     {**self.identity, "rows": rows}, self.task)
                self.commit(rows, done)
            with contextlib.closing(writer):  # an error leaves the partial output closed
                position = self.write_rows(writer, rows, done, bar, truncated)
                with _writing(self.output_path, position):
                    writer.finish(self.output_path)
                    self.progress_path.unlink()
        summary = {"output": str(self.output_path), "rows": rows, "dim": self.width,
                   "task": self.task, "resumed_at": done, "truncated": truncated.cut}
        if truncated.summary() is not None:
            warnings.warn(f"{self.input_path}: {truncated.summary()}", stacklevel=3)
        return summary

    def commit(self, rows: int, done: int) -> None:
        write_text_replacing(self.progress_path,
                             json.dumps({**self.identity, "rows": rows, "done": done}))

    def write_rows(self, writer, rows: int, done: int, bar, truncated) -> int:
        """Rows ``done`` to the end, a chunk at a time, each committed once on disk; the bar
        moves after each engine batch, the cut texts are counted in ``truncated``."""
        position = done
        for chunk in self.model.iter_task(read_texts(self.input_path, skip=done),
                                          model_task(self.model, self.task),
                                          truncated=truncated, on_batch=bar.update,
                                          **self.options):
            with _writing(self.output_path, position):
                writer.write(position, chunk if self.task == "sparse" else
                             torch.stack(chunk).numpy())
                writer.flush()
                self.commit(rows, position + len(chunk))
            position += len(chunk)
        if position != rows:
            raise ValueError(f"{self.input_path} changed while it was read ({position} rows, "
                             f"expected {rows})")
        return position
