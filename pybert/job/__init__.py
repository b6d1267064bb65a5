"""Batch jobs: ``encode`` (``pybert encode``: a file of texts to a file of vectors, resumable)
and ``output`` (its writers: .npy, .safetensors, .parquet). The Ray job is ``pybert.ray``."""

from .encode import TEXT_INPUT_SUFFIXES, count_rows, parse_rows, read_texts, \
    row_places, run_encode_job, task_width

__all__ = ["TEXT_INPUT_SUFFIXES", "count_rows", "parse_rows", "read_texts",
           "row_places", "run_encode_job", "task_width"]
