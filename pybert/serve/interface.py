"""What the server reads of the model it serves: the whole contract between ``pybert serve`` and
a text model (pybert.text.TextModel is one), declared here and nowhere else. The routes, the
batcher and the app read no other attribute of the model, its engine or its tokenizer
(tests/structure checks the source against these Protocols), so a model of another kind (a
decoder embedder, several models behind one server) serves by having these."""

from __future__ import annotations

from typing import Any, Protocol

import torch

__all__ = ["ServedEngine", "ServedTokenizer", "ServedModel"]


class ServedEngine(Protocol):
    config: Any           # vocab_size, max_len, num_hiddens (a pybert.BertConfig)
    device: torch.device
    dtype: torch.dtype
    quantize: str | None
    cpu_plan: Any         # a CpuPlan (its summary()), or None off the CPU
    has_mlm: bool
    has_nsp: bool


class ServedTokenizer(Protocol):
    max_len: int
    mask_id: int | None

    def encode_all(self, items: list, truncation: str, first_row: int, side: str | None,
                   count: Any) -> list: ...

    def encode_ids(self, rows: list, truncation: str, side: str | None, count: Any) -> list: ...

    # describe(texts, add_special_tokens) and decode(ids, skip_special_tokens) are optional:
    # /tokenize and /decode answer 404 for a tokenizer without them (d2l's word tokenizer).
    def describe(self, texts: list, special: bool) -> list: ...

    def decode(self, ids: list, skip_special: bool) -> str: ...


class ServedModel(Protocol):
    engine: ServedEngine
    tokenizer: ServedTokenizer
    tasks: list[str]          # names of pybert.tasks.TASKS it serves
    dim: int                  # a pooled vector's width
    max_input_length: int
    architecture: str
    pooling: str
    normalize: bool
    prompts: dict
    labels: list | None       # the classifier's, or None
    sparse_model: bool        # a SPLADE model (its vectors are /embed_sparse's)
    sparse_task: str          # the task of its sparse vectors ("sparse" or "lexical")
    multi_vector_dim: int | None  # a multi-vector embedding's width, or None
    reranks_by_maxsim: bool   # rerank by MaxSim of multi-vector embeddings, not a classifier

    def prompted(self, items: list, prompt_name: str | None = None) -> list: ...

    def check_dimensions(self, dimensions: int | None) -> int | None: ...

    def mask_positions(self, encoded: list) -> list[list[int]]: ...

    def run_tasks(self, requests: list) -> list: ...
