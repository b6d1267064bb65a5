"""pybert on a Ray cluster: batch embedding with Ray Data, one engine per actor.

- :class:`Embedder` is a callable class for ``ray.data.Dataset.map_batches``: it loads a model
  once per actor and turns a column of texts (or text pairs, or token ids) into a column of
  vectors, pooled, normalised and truncated as ``pybert.encode`` does; the other columns (ids)
  pass through. Give it ``num_gpus=1`` for one engine per GPU, or CPU actors.
- :func:`run_ray_job` is ``pybert encode --ray``: many input files (.txt, .jsonl, .parquet) are
  cut into shards of rows, each written as its own Parquet file, named from its input file and
  row range, under a temporary name and renamed when complete. A rerun after a crash, a killed
  driver or a killed worker skips the finished shards and redoes only the rest: no row lost or
  repeated. Rows that cannot be read (invalid UTF-8, bad JSON, a missing field) get a null
  vector and their error in the ``error`` column, and are counted in the summary.

Ray is an optional extra: ``pip install "pybert-engine[ray]"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import locate
from .checkpoint.files import fingerprint
from .config import BATCH_TOKENS, check_int
from .job import TEXT_INPUT_SUFFIXES, parse_rows, row_places, task_width
from .tasks import JOB_TASKS, TASKS, model_task
from .tasks import task as task_of
from .job.files import output_lock, write_text_replacing
from .text import load_text_model, plan_batches
from .tokenization import check_text

__all__ = ["Embedder", "ShardWriter", "Shard", "plan_shards", "run_ray_job", "INPUT_SUFFIXES"]

INPUT_SUFFIXES = TEXT_INPUT_SUFFIXES + (".parquet",)  # what pybert encode reads, and Parquet
MANIFEST = "_pybert_job.json"
_SHARD_NAME = re.compile(r"\d{5}-[A-Za-z0-9_-]*-\d{12}-\d{12}\.parquet")


def _vector_column(vectors: np.ndarray, ok: list[bool], dim: int):
    """A fixed-size list<float32> column of ``dim``, null where not ``ok``."""
    import pyarrow as pa

    full = np.zeros((len(ok), dim), dtype=np.float32)
    if len(vectors):
        full[np.flatnonzero(ok)] = vectors
    values = pa.array(full.reshape(-1), type=pa.float32())
    mask = pa.array([not o for o in ok], type=pa.bool_())
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=mask)


class Embedder:
    """``ds.map_batches(Embedder, fn_constructor_kwargs={"model": path}, batch_format="pyarrow",
    concurrency=N, num_gpus=1)``: adds ``output_column`` (fixed-size list<float32>) holding
    each row's vector.

    The input is ``text_column`` (strings, with ``pair_column`` for the second text of pairs)
    or, with ``tokens_column``, token ids (lists of ints; ``segments_column`` optional). A row
    that cannot be encoded (not a string, ids out of range) raises, unless ``on_error="null"``:
    then its vector is null and ``error_column`` says why."""

    def __init__(self, model, device: str = "auto", dtype=None, text_column: str = "text",
                 pair_column: str | None = None, tokens_column: str | None = None,
                 segments_column: str | None = None, output_column: str = "embedding",
                 pooling: str | None = None, truncation: str = "warn",
                 batch_tokens: int = BATCH_TOKENS, on_error: str = "raise",
                 error_column: str = "error", quantize: str | None = None):
        if on_error not in ("raise", "null"):
            raise ValueError(f"on_error must be 'raise' or 'null', got {on_error!r}")
        self.model = load_text_model(model, device, dtype, quantize)
        self.text_column, self.pair_column = text_column, pair_column
        self.tokens_column, self.segments_column = tokens_column, segments_column
        self.output_column, self.error_column = output_column, error_column
        self.pooling, self.truncation, self.batch_tokens = pooling, truncation, batch_tokens
        self.on_error = on_error

    def __call__(self, batch):
        import pyarrow as pa

        table = batch if isinstance(batch, pa.Table) else pa.Table.from_pydict(
            {k: list(v) for k, v in batch.items()})
        taken = [c for c in (self.output_column,
                             self.error_column if self.on_error == "null" else None)
                 if c is not None and c in table.column_names]
        if taken:
            raise ValueError(f"the input already has a column {taken[0]!r}, which the "
                             "Embedder writes: pass output_column= / error_column= another "
                             "name, or drop it first")
        items, errors = self._items(table)
        ok = [e is None for e in errors]
        if self.on_error == "raise" and not all(ok):
            raise ValueError(next(e for e in errors if e is not None))
        vectors = self._vectors([item for item, good in zip(items, ok) if good])
        table = table.append_column(self.output_column,
                                    _vector_column(vectors, ok, self.model.dim))
        if self.on_error == "null":
            table = table.append_column(self.error_column, pa.array(errors, type=pa.string()))
        return table

    def _items(self, table) -> tuple[list, list]:
        if self.tokens_column is not None:
            ids = table.column(self.tokens_column).to_pylist()
            segments = table.column(self.segments_column).to_pylist() \
                if self.segments_column else [None] * len(ids)
            items, errors = [], []
            vocab, max_len = self.model.engine.config.vocab_size, self.model.engine.config.max_len
            for i, (row, seg) in enumerate(zip(ids, segments)):
                seg = [0] * len(row or []) if seg is None else seg
                good = isinstance(row, list) and 1 <= len(row) <= max_len and \
                    len(seg) == len(row) and all(isinstance(t, int) and 0 <= t < vocab
                                                 for t in row) and set(seg) <= {0, 1}
                items.append((row, seg) if good else None)
                errors.append(None if good else f"row {i}: token ids must be 1..{max_len} ids "
                                                "in [0, vocab_size) with segments of 0/1")
            return items, errors
        texts = table.column(self.text_column).to_pylist()
        pairs = table.column(self.pair_column).to_pylist() if self.pair_column else None
        items, errors = [], []
        for i, text in enumerate(texts):
            second = None if pairs is None else pairs[i]
            if not isinstance(text, str) or (second is not None and not isinstance(second, str)):
                items.append(None)
                errors.append(f"row {i}: {self.text_column} must be a string")
                continue
            items.append(text if second is None else (text, second))
            errors.append(None)
        return items, errors

    def _vectors(self, items: list) -> np.ndarray:
        if not items:
            return np.zeros((0, self.model.dim), dtype=np.float32)
        if self.tokens_column is not None:  # ids already tokenised: the batch entry point
            out = np.zeros((len(items), self.model.dim), dtype=np.float32)
            for rows in plan_batches([len(ids) for ids, _ in items], self.batch_tokens):
                out[rows] = self.model.run_tasks(
                    [("embed", [items[r] for r in rows], {"pooling": self.pooling})])[0].numpy()
            return out
        return self.model.encode(items, pooling=self.pooling, batch_tokens=self.batch_tokens,
                                 truncation=self.truncation)


# -- the sharded job ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """Rows [start, stop) of one input file, written to ``name`` in the output folder; a
    text file's rows are read from byte ``offset`` (line ``line``), not from its top."""

    path: str
    start: int
    stop: int
    name: str
    offset: int = 0
    line: int = 1


def _input_files(inputs) -> list[Path]:
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in INPUT_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"--input {path} holds no {INPUT_SUFFIXES} files")
            files += found
        elif path.is_file():
            if path.suffix not in INPUT_SUFFIXES:
                raise ValueError(f"--input must be {INPUT_SUFFIXES} files or folders of them, "
                                 f"got {path.name}")
            files.append(path)
        else:
            raise FileNotFoundError(f"--input {path} does not exist")
    if len({f.resolve() for f in files}) != len(files):
        raise ValueError("an input file is named twice")
    return files


def _rows_and_places(path: Path, every: int) -> tuple[int, dict[int, tuple[int, int, int]]]:
    """(rows of ``path``, {row: (row, byte offset, line)} where each shard of a text file
    starts; a Parquet file needs none: its row groups are read by index)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
            rows = pq.ParquetFile(path).metadata.num_rows
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise ValueError(f"{path}: not a readable Parquet file ({str(err)[:200]})") \
                from None
        if "text" not in schema.names:
            raise ValueError(f"{path}: a Parquet input needs a \"text\" column, it has "
                             f"{schema.names[:20]}")
        return rows, {}
    rows, places = row_places(path, every)
    return rows, {place[0]: place for place in places}


def plan_shards(files: list[Path], rows_per_shard: int) -> list[Shard]:
    """Every file's rows cut into shards of ``rows_per_shard``, each named from its file (its
    position in the list and its stem) and row range, so a rerun finds the same names."""
    shards = []
    for index, path in enumerate(files):
        rows, places = _rows_and_places(path, rows_per_shard)
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:60]
        for start in range(0, rows, rows_per_shard):
            stop = min(start + rows_per_shard, rows)
            _, offset, line = places.get(start, (start, 0, 1))
            shards.append(Shard(str(path.resolve()), start, stop,
                                f"{index:05d}-{stem}-{start:012d}-{stop:012d}.parquet",
                                offset, line))
    return shards


def _parquet_rows(path: str, start: int, stop: int):
    """(row, text or None, error or None, id) of rows [start, stop) of a Parquet file with a
    "text" column (and optionally "text_pair" and "id"), reading only the row groups that hold
    them. Strings are decoded here: invalid UTF-8 (or a lone surrogate) is that row's error; a
    file that cannot be read makes every row of the shard an error naming it."""
    try:
        table = _parquet_slice(path, start, stop)
    except (OSError, ValueError) as err:  # garbled pages, a changed file
        error = ValueError(f"{path}: rows {start}..{stop - 1} cannot be read: {str(err)[:200]}")
        for row in range(start, stop):
            yield row, None, error, None
        return
    names = table.column_names
    texts = _decoded(table.column("text").to_pylist())
    pairs = _decoded(table.column("text_pair").to_pylist()) if "text_pair" in names \
        else [None] * len(texts)
    ids = table.column("id").to_pylist() if "id" in names else [None] * len(texts)
    for i, (text, pair, row_id) in enumerate(zip(texts, pairs, ids)):
        where = f"{path}: row {start + i}"
        try:
            bad = next((p for p in (text, pair) if isinstance(p, _BadText)), None)
            if bad is not None:
                raise ValueError(f"{where}: {bad.reason}")
            if not isinstance(text, str) or (pair is not None and not isinstance(pair, str)):
                raise ValueError(f"{where}: text must be a string")
            for part in (text,) if pair is None else (text, pair):
                check_text(part, where)
        except ValueError as err:
            yield start + i, None, err, row_id
            continue
        yield start + i, text if pair is None else (text, pair), None, row_id


def _parquet_slice(path: str, start: int, stop: int):
    """Rows [start, stop) of the text columns of a Parquet file, from the row groups that
    hold them only; string columns as bytes (decoded per row by the caller)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    columns = [c for c in ("text", "text_pair", "id") if c in parquet.schema_arrow.names]
    groups, first, seen = [], None, 0
    for g in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(g).num_rows
        if seen + size > start and seen < stop:
            groups.append(g)
            first = seen if first is None else first
        seen += size
    if not groups:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    schema = parquet.schema_arrow
    binary = pa.schema([pa.field(f.name, pa.binary()) if pa.types.is_string(f.type) or
                        pa.types.is_large_string(f.type) else f for f in schema])
    table = parquet.read_row_groups(groups, columns=columns, use_threads=False)
    table = table.cast(pa.schema([binary.field(c) for c in columns]))
    return table.slice(start - first, stop - start)


def _decoded(values: list) -> list:
    """Bytes decoded as UTF-8 (a str, or None kept); invalid UTF-8 becomes an error marker
    the row check turns into that row's error."""
    out = []
    for value in values:
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as err:
                value = _BadText(f"invalid UTF-8 at byte {err.start}")
        out.append(value)
    return out


class _BadText:
    """A Parquet string that is not valid UTF-8, and why."""

    def __init__(self, reason: str):
        self.reason = reason


class ShardWriter:
    """A Ray actor's work: load the model once; for each shard, read its rows, embed them, and
    write ``<name>`` in the output folder through a temporary file that is renamed only when
    complete. Returns one summary row per shard."""

    def __init__(self, model, output_dir: str, device: str = "auto", dtype=None,
                 pooling: str | None = None, truncation: str = "warn",
                 batch_tokens: int = BATCH_TOKENS, quantize: str | None = None, task: str = "embed",
                 prompt_name: str | None = None, dimensions: int | None = None,
                 raw_scores: bool = False, revision: str | None = None):
        self.model = load_text_model(model, device, dtype, quantize, revision)
        self.output_dir = Path(output_dir)
        self.pooling, self.truncation, self.batch_tokens = pooling, truncation, batch_tokens
        self.task, self.prompt_name = task, prompt_name
        self.dimensions, self.raw_scores = dimensions, raw_scores
        task_width(self.model, task, dimensions, pooling)  # a model that cannot run it fails here
        self.model.prompted([], prompt_name)

    def __call__(self, batch: dict) -> dict:
        out = {"name": [], "rows": [], "bad_rows": [], "seconds": []}
        for i in range(len(batch["name"])):
            shard = Shard(str(batch["path"][i]), int(batch["start"][i]), int(batch["stop"][i]),
                          str(batch["name"][i]), int(batch["offset"][i]), int(batch["line"][i]))
            began = time.perf_counter()
            rows, bad = self.write(shard)
            for key, value in (("name", shard.name), ("rows", rows), ("bad_rows", bad),
                               ("seconds", time.perf_counter() - began)):
                out[key].append(value)
        return out

    def write(self, shard: Shard) -> tuple[int, int]:
        import pyarrow as pa
        import pyarrow.parquet as pq


        if shard.path.endswith(".parquet"):
            records = list(_parquet_rows(shard.path, shard.start, shard.stop))
        else:
            records = list(parse_rows(shard.path, shard.start, shard.stop,
                                      (shard.start, shard.offset, shard.line)))
        good = [text for _, text, error, _ in records if error is None]
        ok = [error is None for _, _, error, _ in records]
        ids = [row_id for *_, row_id in records]
        table = pa.table({
            "file": pa.array([shard.path] * len(records), type=pa.string()),
            "row": pa.array([row for row, *_ in records], type=pa.int64()),
            "id": pa.array([None if i is None else str(i) for i in ids], type=pa.string()),
            **self._columns(good, ok),
            "error": pa.array([None if e is None else str(e) for *_, e, _ in records],
                              type=pa.string()),
        })
        final = self.output_dir / shard.name
        tmp = self.output_dir / f".{shard.name}.{uuid.uuid4().hex}.tmp"
        try:
            pq.write_table(table, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return len(records), len(records) - sum(ok)

    def _columns(self, good: list, ok: list) -> dict:
        """The task's output columns for the rows ``ok`` (their texts ``good``), null for the
        others: "embedding" or "scores" (fixed-size lists of float32), or SPLADE's "indices"
        and "values" (lists)."""
        import pyarrow as pa

        results = [row for chunk in self.model.iter_task(
            good, model_task(self.model, self.task),
            pooling=self.pooling if self.task == "embed" else None,
            batch_tokens=self.batch_tokens, chunk_size=max(1, len(good)),
            truncation=self.truncation, prompt_name=self.prompt_name,
            dimensions=self.dimensions, raw_scores=self.raw_scores) for row in chunk]
        remaining = iter(results)
        rows = [next(remaining) if o else None for o in ok]
        names = TASKS[self.task].names
        if not names:  # SPLADE's sparse vectors
            return {"indices": pa.array([None if r is None else r.indices for r in rows],
                                        pa.list_(pa.int64())),
                    "values": pa.array([None if r is None else r.values for r in rows],
                                       pa.list_(pa.float32()))}
        width = task_width(self.model, self.task, self.dimensions)
        vectors = torch.stack(results).numpy() if results else \
            np.zeros((0, width), dtype=np.float32)
        return {names[1]: _vector_column(vectors, ok, width)}


def _job_identity(model: str, files: list[Path], options: dict) -> dict:
    inputs = []
    for path in files:
        stat = path.stat()
        inputs.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    digest = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]
    return {"model": model, "inputs": inputs, "inputs_digest": digest, **options}


def _prepare_output(output_dir: Path, identity: dict, shards: list[Shard], files: list[Path],
                    overwrite: bool) -> None:
    """Make ``output_dir`` this job's: its manifest must match (or ``overwrite`` removes the
    old job's shards, the ones its manifest lists, and nothing else), a crashed writer's
    partial shards go (only this job's), and a folder holding the inputs is refused."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output {output_dir} must be a folder for a Ray job")
    inside = [f for f in files if output_dir.resolve() in f.resolve().parents]
    if inside:
        raise ValueError(f"--output {output_dir} holds the input {inside[0]}: write the "
                         "shards to a folder of their own")
    output_dir.mkdir(parents=True, exist_ok=True)
    manifest = output_dir / MANIFEST
    old = json.loads(manifest.read_text()) if manifest.exists() else None
    old_job = old.get("job", old) if isinstance(old, dict) else old
    if old is not None and not overwrite and old_job != identity:
        raise ValueError(f"{output_dir} holds the shards of a different job (other inputs, "
                         "model or options); pass --overwrite to start again")
    if old is not None and overwrite:
        if isinstance(old, dict) and "shards" in old:
            listed = [n for n in old["shards"] if isinstance(n, str) and Path(n).name == n]
        else:  # a manifest written before it listed its shards: their names' form
            listed = [p.name for p in output_dir.glob("*.parquet") if _SHARD_NAME.match(p.name)]
        for name in listed:
            (output_dir / name).unlink(missing_ok=True)
    names = [shard.name for shard in shards]
    write_text_replacing(manifest, json.dumps({"job": identity, "shards": names}, indent=1))
    for name in names:
        for stale in output_dir.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


def _actors(resources: dict, pending: int, actors: int | None,
            gpus_per_actor: float | None) -> tuple[int, dict]:
    """(how many actors, the resources of each): one per GPU where the cluster has GPUs, else
    ``actors`` CPU actors (default: one per CPU); never more than the shards to write."""
    gpus = int(resources.get("GPU", 0)) if gpus_per_actor is None else gpus_per_actor
    per_actor = {"num_gpus": 1} if gpus and gpus_per_actor is None else (
        {"num_gpus": gpus_per_actor} if gpus_per_actor else {"num_cpus": 1})
    count = actors or (int(resources.get("GPU", 0)) if "num_gpus" in per_actor
                       else max(1, int(resources.get("CPU", 1))))
    return max(1, min(count, pending)), per_actor


def _write_shards(pending: list[Shard], address: str | None, writer, actors: int | None,
                  gpus_per_actor: float | None, writer_options: dict) -> int:
    """Write ``pending`` shards on the cluster (started here for the run if Ray is not up);
    the bad rows counted."""
    import ray

    started_here = not ray.is_initialized()
    reaper = None
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
        if address is None:
            reaper = reaper_of_local_cluster()
    try:
        count, per_actor = _actors(ray.cluster_resources(), len(pending), actors,
                                   gpus_per_actor)
        dataset = ray.data.from_items([asdict(s) for s in pending],
                                      override_num_blocks=len(pending))
        results = dataset.map_batches(writer, batch_size=1, concurrency=count, **per_actor,
                                      fn_constructor_kwargs=writer_options,
                                      max_restarts=-1, max_task_retries=-1)
        return sum(int(row["bad_rows"]) for row in results.iter_rows())
    finally:
        if started_here:
            ray.shutdown()
        if reaper is not None:  # whatever outlived the shutdown goes now
            reaper.stdin.close()
            reaper.wait(30)


def reaper_of_local_cluster():
    """A watchdog (pybert/_reaper.py) for the local Ray cluster this driver just started (the
    processes it spawned): when the driver ends, even by SIGKILL, the watchdog's input pipe
    closes and it kills the cluster's process trees, which would otherwise outlive the driver
    for seconds to minutes. Linux only (/proc); elsewhere None."""
    import subprocess
    import sys

    from ._reaper import processes

    if not os.path.isdir("/proc/self"):
        return None
    me = os.getpid()
    roots = [[pid, start] for pid, (parent, start) in processes().items() if parent == me]
    return subprocess.Popen([sys.executable, str(Path(__file__).with_name("_reaper.py")),
                             json.dumps(roots)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def run_ray_job(model: str, inputs, output_dir, address: str | None = None,
                pooling: str | None = None, truncation: str = "warn",
                batch_tokens: int = BATCH_TOKENS,
                rows_per_shard: int = 10_000, actors: int | None = None,
                gpus_per_actor: float | None = None, device: str = "auto", dtype=None,
                overwrite: bool = False, writer=ShardWriter,
                quantize: str | None = None, task: str = "embed",
                prompt_name: str | None = None, dimensions: int | None = None,
                raw_scores: bool = False, revision: str | None = None) -> dict:
    """Run ``task`` on every row of ``inputs`` (files or folders of .txt, .jsonl, .parquet)
    into Parquet shards in ``output_dir`` on a Ray cluster (``address``: "auto", an address,
    or None for a local one started for the run), and return a summary. Tasks as
    ``pybert encode``'s: "embed" (column "embedding"), "classify" ("scores"), "sparse"
    ("indices", "values").

    One actor per GPU when the cluster has GPUs (``gpus_per_actor`` 1), else ``actors`` CPU
    actors (default: the cluster's CPUs). ``model``: a directory every node can read, or a
    Hugging Face hub id (at ``revision``), which the actors load at the commit the driver
    resolved. Finished shards are skipped, so rerunning the same
    command after a crash finishes the job; ``overwrite`` starts again. ``writer`` is the actor
    class (ShardWriter; tests pass one that dies on purpose)."""
    check_int(rows_per_shard, "rows_per_shard")
    check_int(batch_tokens, "batch_tokens")
    task_of(task, JOB_TASKS)
    files = _input_files(inputs)
    output_dir = Path(output_dir)
    options = {"pooling": pooling, "truncation": truncation, "rows_per_shard": rows_per_shard,
               "dtype": str(dtype)}
    # Absent at their defaults, so that jobs started before these options still resume.
    options.update({k: v for k, v in (("quantize", quantize), ("task", task),
                                      ("prompt_name", prompt_name), ("dimensions", dimensions),
                                      ("raw_scores", raw_scores))
                    if v not in (None, False, "embed")})
    shards = plan_shards(files, rows_per_shard)
    local = locate(model, revision)
    if not Path(model).exists():  # a hub id: every actor loads the same commit
        revision = local.name
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(output_dir):  # a second job on this output refuses at once
        # Keyed on the checkpoint's content: one replaced at the same path is another job.
        _prepare_output(output_dir, _job_identity("sha256:" + fingerprint(local), files,
                                                  options), shards, files, overwrite)
        return _run_shards(output_dir, shards, address, writer, actors, gpus_per_actor,
                           dict(model=str(model), output_dir=str(output_dir), device=device,
                                dtype=dtype, pooling=pooling, truncation=truncation,
                                batch_tokens=batch_tokens, quantize=quantize, task=task,
                                prompt_name=prompt_name, dimensions=dimensions,
                                raw_scores=raw_scores, revision=revision))


def _run_shards(output_dir: Path, shards: list[Shard], address, writer, actors,
                gpus_per_actor, writer_options: dict) -> dict:
    """Write the shards not written yet; the job's summary."""
    done = {p.name for p in output_dir.glob("*.parquet")}
    pending = [s for s in shards if s.name not in done]
    began = time.perf_counter()
    summary = {"output": str(output_dir), "shards": len(shards),
               "shards_skipped": len(shards) - len(pending),
               "rows": sum(s.stop - s.start for s in pending), "bad_rows": 0}
    if pending:
        summary["bad_rows"] = _write_shards(pending, address, writer, actors, gpus_per_actor,
                                            writer_options)
    seconds = time.perf_counter() - began
    summary["seconds"] = round(seconds, 3)
    summary["rows_per_s"] = round(summary["rows"] / seconds, 1) if seconds > 0 else None
    missing = [s.name for s in shards if not (output_dir / s.name).exists()]
    if missing:
        raise RuntimeError(f"{len(missing)} shards were not written (first: {missing[0]}); run "
                           "the same command again to finish them")
    return summary
