"""Texts in, vectors out: length buckets, token budgets, a tokenising thread, ordered results.

``encode_texts`` is the engine behind ``pybert.encode(model, texts)`` and ``pybert encode``:
texts are taken a chunk at a time (bounded memory whatever the input size), tokenised on a
worker thread while the engine runs the previous batches, sorted by length inside the chunk
into batches of at most ``batch_tokens`` padded tokens (batch size x longest length, which
bounds attention's cost too), run packed (no padding is built, sent or computed; pooling reads
the packed encodings), and handed back in the caller's order.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["plan_batches", "pack_batch", "pad_batch", "iter_encoded", "encode_texts",
           "run_encode_job", "POOLINGS"]

POOLINGS = ("cls", "mean", "tokens")


def plan_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches: sorted by length (longest first), each batch holding at
    most ``batch_tokens`` padded tokens (batch size x its longest length); a sequence longer
    than the budget gets a batch of its own."""
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current, longest = [], [], 0
    for i in order:
        new_longest = max(longest, lengths[i])
        if current and new_longest * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


@dataclass
class _Batch:
    """One batch of a chunk, packed: no padding is built, sent or computed."""

    chunk: int               # which chunk of the input
    rows: list[int]          # positions inside the chunk
    tokens: torch.Tensor     # (total_tokens,) the rows' ids one after another
    segments: torch.Tensor   # (total_tokens,)
    cu_seqlens: torch.Tensor  # (len(rows) + 1,)


def pack_batch(encoded: list, rows: list[int]):
    """tokens, segments (total_tokens,) and cu_seqlens (len(rows) + 1,) of the (ids, segments)
    pairs ``encoded[r]`` of ``rows``, one sequence after another."""
    lengths = torch.tensor([len(encoded[r][0]) for r in rows], dtype=torch.int64)
    cu_seqlens = torch.zeros(len(rows) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=cu_seqlens[1:])
    tokens = torch.tensor([t for r in rows for t in encoded[r][0]], dtype=torch.int64)
    segments = torch.tensor([t for r in rows for t in encoded[r][1]], dtype=torch.int64)
    return tokens, segments, cu_seqlens


_DONE = object()


def pad_batch(encoded: list, rows: list[int], pad: int):
    """tokens, segments (len(rows), longest) padded with ``pad`` / 0, and valid_lens, for the
    (ids, segments) pairs ``encoded[r]`` of ``rows``."""
    lengths = [len(encoded[r][0]) for r in rows]
    seq_len = max(lengths)
    tokens = torch.full((len(rows), seq_len), pad, dtype=torch.int64)
    segments = torch.zeros((len(rows), seq_len), dtype=torch.int64)
    for j, r in enumerate(rows):
        ids, segs = encoded[r]
        tokens[j, : len(ids)] = torch.tensor(ids)
        segments[j, : len(segs)] = torch.tensor(segs)
    return tokens, segments, torch.tensor(lengths, dtype=torch.int64)


def _produce(engine, items: Iterator, chunk_size: int, batch_tokens: int, truncation: str,
             out: queue.Queue, stop: threading.Event) -> None:
    """Worker thread: tokenise chunk after chunk and queue padded batches, then _DONE (or the
    exception that stopped it)."""
    def put(item) -> bool:
        while not stop.is_set():  # the consumer may have gone (an error, a closed generator)
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        start = 0
        for chunk_index in itertools.count():
            chunk = list(itertools.islice(items, chunk_size))
            if not chunk:
                break
            encoded = engine.tokenizer.encode_all(chunk, truncation, start=start)
            start += len(chunk)
            batches = plan_batches([len(ids) for ids, _ in encoded], batch_tokens)
            if not put(("chunk", chunk_index, len(chunk), len(batches))):
                return
            for rows in batches:
                if not put(_Batch(chunk_index, rows, *pack_batch(encoded, rows))):
                    return
        put(_DONE)
    except BaseException as err:  # handed to the consumer, which raises it
        put(err)


def _pool(packed: torch.Tensor, cu_seqlens: torch.Tensor, pooling: str, normalize: bool):
    """From packed encodings (total_tokens, H): (B, H) pooled vectors (L2-normalised if
    ``normalize``), or a list of (len_b, H) per-token encodings; float32 on the CPU."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    if pooling == "tokens":
        return list(packed.float().cpu().split(lengths))
    starts = cu_seqlens[:-1].to(packed.device)
    if pooling == "cls":
        pooled = packed[starts].float()
    else:
        owner = torch.repeat_interleave(torch.arange(len(lengths), device=packed.device),
                                        torch.tensor(lengths, device=packed.device))
        sums = torch.zeros((len(lengths), packed.shape[1]), device=packed.device,
                           dtype=torch.float32).index_add_(0, owner, packed.float())
        pooled = sums / torch.tensor(lengths, device=packed.device, dtype=torch.float32)[:, None]
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return pooled.cpu()


def iter_encoded(engine, texts: Iterable, pooling: str = "cls", batch_tokens: int = 16384,
                 chunk_size: int = 4096, truncation: str = "warn",
                 prefetch: int = 4) -> Iterator[list]:
    """Yield the results of each chunk of ``texts``, in input order: a list of (H,) float32
    tensors (pooled) or of (len, H) tensors (pooling="tokens")."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if engine.tokenizer is None:
        raise ValueError("this engine has no vocabulary, so it cannot tokenise text: load a "
                         "checkpoint with a vocab.txt or pass vocab= to Engine.from_model")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batches: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    worker = threading.Thread(target=_produce, daemon=True, name="pybert-tokenize",
                              args=(engine, iter(texts), chunk_size, batch_tokens, truncation,
                                    batches, stop))
    worker.start()
    try:
        pending: dict[int, dict] = {}
        next_chunk = 0
        while True:
            item = batches.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, tuple):
                _, index, size, num_batches = item
                pending[index] = {"rows": [None] * size, "left": num_batches}
                continue
            packed = engine.encode_packed(item.tokens, item.cu_seqlens, item.segments)
            pooled = _pool(packed, item.cu_seqlens, pooling, engine.normalize)
            state = pending[item.chunk]
            for j, r in enumerate(item.rows):
                state["rows"][r] = pooled[j]
            state["left"] -= 1
            while next_chunk in pending and pending[next_chunk]["left"] == 0:
                yield pending.pop(next_chunk)["rows"]
                next_chunk += 1
    finally:
        stop.set()
        worker.join(timeout=5)


def encode_texts(engine, texts, pooling: str = "cls", return_type: str = "numpy",
                 batch_tokens: int = 16384, truncation: str = "warn"):
    """Vectors of ``texts`` (a str, or a list of str and (text_a, text_b) pairs), in order.

    pooling "cls" (the <cls> encoding) or "mean" (mean over real tokens) gives an (N, H)
    array; "tokens" gives a list of (len_i, H) arrays. return_type "numpy" or "torch"."""
    if return_type not in ("numpy", "torch"):
        raise ValueError(f"return_type must be 'numpy' or 'torch', got {return_type!r}")
    single = isinstance(texts, str)
    items = [texts] if single else list(texts)
    rows = [row for chunk in iter_encoded(engine, items, pooling, batch_tokens,
                                          chunk_size=max(1, len(items)), truncation=truncation)
            for row in chunk]
    if pooling == "tokens":
        out = rows if return_type == "torch" else [r.numpy() for r in rows]
        return out[0] if single else out
    hidden = engine.config.num_hiddens
    stacked = torch.stack(rows) if rows else torch.zeros((0, hidden))
    if single:
        stacked = stacked[0]
    return stacked if return_type == "torch" else np.ascontiguousarray(stacked.numpy())


# ---------------------------------------------------------------------------------------------
# The batch job: a text file in, an embedding file out, resumable.

def read_texts(path, skip: int = 0) -> Iterator:
    """The rows of a .txt (one text per line; a tab separates a pair) or .jsonl file (each line
    a string, a [text_a, text_b] pair, or an object with "text" and optionally "text_pair",
    or "text_a" and "text_b"), from row ``skip`` on. Blank .jsonl lines are not rows."""
    import json
    from pathlib import Path

    path = Path(path)
    jsonl = path.suffix == ".jsonl"
    row = 0
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if jsonl and not line.strip():
                continue
            row += 1
            if row <= skip:
                continue
            if not jsonl:
                yield tuple(line.split("\t", 1)) if "\t" in line else line
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_number}: not valid JSON: {err}") from None
            yield _jsonl_text(value, f"{path}:{line_number}")


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


def count_rows(path) -> int:
    """The rows of ``path`` as read_texts counts them, without parsing them."""
    from pathlib import Path

    jsonl = Path(path).suffix == ".jsonl"
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if not (jsonl and not line.strip()))


def run_encode_job(engine, input_path, output_path, model_id: str, pooling: str | None = None,
                   batch_tokens: int = 16384, chunk_size: int = 4096, truncation: str = "warn",
                   overwrite: bool = False, progress: bool = True) -> dict:
    """Embed every row of ``input_path`` into ``output_path`` (.npy, .safetensors, .parquet),
    in input order, streaming a chunk at a time.

    The output is built as ``<output>.partial`` with ``<output>.progress.json`` recording the
    rows done after each chunk is durably written; run the same job again after an
    interruption and it continues from there. Only a finished job has ``output_path``."""
    import json
    import os
    from pathlib import Path

    from tqdm import tqdm

    from .output import open_writer, partial_path

    pooling = pooling or engine.pooling
    if pooling not in ("cls", "mean"):
        raise ValueError(f"a batch job pools each text to one vector: pooling must be cls or "
                         f"mean, got {pooling!r}")
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"--input {input_path} does not exist")
    if input_path.suffix not in (".txt", ".jsonl"):
        raise ValueError(f"--input must be a .txt or .jsonl file, got {input_path.name}")
    progress_path = output_path.with_name(output_path.name + ".progress.json")
    if output_path.exists() and not overwrite:
        raise FileExistsError(f"{output_path} exists (a finished job); pass --overwrite to "
                              "replace it")
    stat = input_path.stat()
    job = {"input": str(input_path.resolve()), "input_bytes": stat.st_size,
           "input_mtime_ns": stat.st_mtime_ns, "model": model_id, "pooling": pooling,
           "normalize": engine.normalize, "truncation": truncation,
           "dim": engine.config.num_hiddens,
           "engine_dtype": str(engine.dtype).replace("torch.", "")}
    done, resume = 0, False
    if progress_path.exists() and partial_path(output_path).exists() and not overwrite:
        saved = json.loads(progress_path.read_text())
        if {k: saved.get(k) for k in job} != job:
            raise ValueError(f"{partial_path(output_path)} belongs to a different job (other "
                             "input, model or options); pass --overwrite to start again")
        done, resume = saved["done"], True
        rows = saved["rows"]
    else:
        rows = count_rows(input_path)
    dim = engine.config.num_hiddens
    writer = open_writer(output_path, rows, dim, resume, {**job, "rows": rows})

    def commit(count: int) -> None:
        tmp = progress_path.with_name(progress_path.name + ".tmp")
        tmp.write_text(json.dumps({**job, "rows": rows, "done": count}))
        os.replace(tmp, progress_path)

    commit(done)
    bar = tqdm(total=rows, initial=done, unit="sent", disable=not progress, dynamic_ncols=True,
               smoothing=0.1)
    try:
        position = done
        for chunk in iter_encoded(engine, read_texts(input_path, skip=done), pooling,
                                  batch_tokens, chunk_size, truncation):
            block = torch.stack(chunk).numpy()
            writer.write(position, block)
            writer.flush()
            position += len(chunk)
            commit(position)
            bar.update(len(chunk))
        if position != rows:
            raise ValueError(f"{input_path} changed while it was read ({position} rows, "
                             f"expected {rows})")
        writer.finish(output_path)
        progress_path.unlink()
    finally:
        bar.close()
    return {"output": str(output_path), "rows": rows, "dim": dim, "resumed_at": done}
