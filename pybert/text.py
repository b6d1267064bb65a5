"""Texts in, vectors out: the text model around an engine.

A :class:`TextModel` is an :class:`~pybert.Engine` plus what turns texts into its inputs and
its outputs into answers: the checkpoint's tokenizer and prompts, its pooling ("cls" or
"mean"), Dense projection and normalisation (a sentence-transformers model's), which NSP class
means "b follows a", and its task heads (:mod:`pybert.heads`): a sequence classifier
(``classify``, ``rerank``) and SPLADE's sparse vectors (``encode_sparse``).

Texts are taken a chunk at a time (bounded memory whatever the input size), tokenised on a
worker thread while the engine runs the previous batches, sorted by length inside the chunk
into batches of at most ``batch_tokens`` padded tokens (batch size x longest length, which
bounds attention's cost too), run packed (no padding is built, sent or computed; pooling reads
the packed encodings), and handed back in the caller's order.
"""

from __future__ import annotations

import itertools
import queue
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .checkpoint import SparseSpec
from .config import BATCH_TOKENS, check_int
from .engine import Engine
from .heads import l2_normalize, score, sparse_pool
from .loader import LoadedModel, load_checkpoint
from .tasks import task as task_of
from .tokenization import TruncationCount, Vocab, WordTokenizer, check_side, check_truncation

__all__ = ["TextModel", "SparseVector", "text_model_of", "plan_batches", "pack_batch",
           "pad_batch", "POOLINGS"]

POOLINGS = ("cls", "mean", "tokens")
# The windows one encode_long call may make (a 10^6-token text with an overlap one short of
# the window would make 10^6 of 512 tokens each).
MAX_WINDOWS = 100_000
# The MLM logits a sparse or fill-mask batch holds at once (rows x vocabulary x 4 bytes).
SPARSE_LOGITS_BYTES = 128 << 20


class SparseVector(NamedTuple):
    """A text's sparse lexical vector: the vocabulary ids with a non-zero weight, ascending,
    and their weights."""

    indices: np.ndarray  # int64
    values: np.ndarray   # float32


def plan_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches: sorted by length (longest first), each batch holding at
    most ``batch_tokens`` padded tokens (batch size x its longest length); a sequence longer
    than the budget gets a batch of its own."""
    check_int(batch_tokens, "batch_tokens")
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


def pack_batch(encoded: list, rows: list[int]):
    """tokens, segments (total_tokens,) and cu_seqlens (len(rows) + 1,) of the (ids, segments)
    pairs ``encoded[r]`` of ``rows``, one sequence after another."""
    lengths = torch.tensor([len(encoded[r][0]) for r in rows], dtype=torch.int64)
    cu_seqlens = torch.zeros(len(rows) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=cu_seqlens[1:])
    tokens = torch.tensor([t for r in rows for t in encoded[r][0]], dtype=torch.int64)
    segments = torch.tensor([t for r in rows for t in encoded[r][1]], dtype=torch.int64)
    return tokens, segments, cu_seqlens


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


def _window_batches(windows: list, batch_tokens: int):
    """(owners, windows) batches of at most ``batch_tokens`` padded tokens (one window at
    least) from each text's windows (an iterable each), made as they are consumed."""
    owners, batch, longest = [], [], 0
    for owner, text_windows in enumerate(windows):
        for window in text_windows:
            new_longest = max(longest, len(window[0]))
            if batch and new_longest * (len(batch) + 1) > batch_tokens:
                yield owners, batch
                owners, batch, new_longest = [], [], len(window[0])
            owners.append(owner)
            batch.append(window)
            longest = new_longest
    if batch:
        yield owners, batch


@dataclass
class _Batch:
    """One batch of a chunk, packed: no padding is built, sent or computed."""

    chunk: int               # which chunk of the input
    rows: list[int]          # positions inside the chunk
    tokens: torch.Tensor     # (total_tokens,) the rows' ids one after another
    segments: torch.Tensor   # (total_tokens,)
    cu_seqlens: torch.Tensor  # (len(rows) + 1,)
    sequences: list          # the rows' (ids, segments) as tokenised (what padded calls take)


_DONE = object()


def _pool(packed: torch.Tensor, cu_seqlens: torch.Tensor, pooling: str, normalize: bool,
          dense=None, dimensions: int | None = None):
    """From packed encodings (total_tokens, H): (B, D) pooled vectors, through ``dense`` (a
    LinearHead) if given, cut to their first ``dimensions`` values if given, then L2-normalised
    if ``normalize``; or a list of (len_b, H) per-token encodings. float32 on the CPU."""
    if pooling == "tokens":
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        return list(packed.float().cpu().split(lengths))
    return _after_pooling(_pooled(packed, cu_seqlens, pooling), normalize, dense, dimensions)


def _pooled(packed: torch.Tensor, cu_seqlens: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, H) float32 on the encodings' device: each sequence's first row ("cls") or the mean
    of its rows ("mean")."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    if pooling == "cls":
        return packed[cu_seqlens[:-1].to(packed.device)].float()
    # Summed in float64: float32 sums of large finite encodings (~3e37) would overflow where
    # their mean does not.
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=packed.device),
                                    torch.tensor(lengths, device=packed.device))
    sums = torch.zeros((len(lengths), packed.shape[1]), device=packed.device,
                       dtype=torch.float64).index_add_(0, owner, packed.double())
    lengths = torch.tensor(lengths, device=packed.device, dtype=torch.float64)
    return (sums / lengths[:, None]).float()


def _finite(values: torch.Tensor, what: str) -> torch.Tensor:
    """``values`` if every one is finite; else a ValueError saying which output overflowed
    (never an inf in a file, nor a score of 1.0 made from one)."""
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{what} are not finite in float32 (the model's outputs overflow for "
                         "this input)")
    return values


def _after_pooling(pooled: torch.Tensor, normalize: bool, dense=None,
                   dimensions: int | None = None) -> torch.Tensor:
    """Pooled vectors through ``dense``, cut to ``dimensions``, normalised: float32, CPU."""
    if dense is not None:
        pooled = dense(pooled)
    if dimensions is not None:
        pooled = pooled[:, :dimensions]
    if not bool(torch.isfinite(pooled).all()):
        raise ValueError("a pooled vector is not finite in float32 (the encodings are too "
                         "large to pool)")
    if normalize:
        pooled = l2_normalize(pooled)
    return pooled.cpu()


class TextModel:
    """Texts in, vectors out: ``tokenizer`` + ``engine`` + ``pooling`` (+ ``normalize``).

    Build one with :meth:`load` (a pybert, Hugging Face or sentence-transformers checkpoint)
    or :meth:`from_model` (an eager model and its vocabulary). ``encode`` gives vectors,
    ``fill_mask`` the MLM head's words, ``next_sentence`` the NSP head's probability,
    ``classify`` and ``rerank`` a sequence classifier's scores, ``encode_sparse`` SPLADE's
    sparse vectors; ``tasks`` says which this model serves.
    """

    def __init__(self, engine, tokenizer, pooling: str = "cls", normalize: bool = False,
                 nsp_is_next_label: int = 1, *, dense=None, classifier=None,
                 sparse: SparseSpec | None = None, prompts: dict | None = None,
                 default_prompt_name: str | None = None, architecture: str = "BERT"):
        if tokenizer is None:
            raise ValueError("a TextModel needs a tokenizer")
        if pooling not in POOLINGS[:2]:
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.engine = engine
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        # Which NSP class means "b follows a": 1 in d2l, 0 in Hugging Face's BERT.
        self.nsp_is_next_label = nsp_is_next_label
        self.dense = dense                  # a LinearHead after pooling, or None
        self.classifier = classifier        # a pybert.heads.Classifier, or None
        # SPLADE's pooling: the checkpoint's, or max of log(1 + relu) for any MLM model.
        self.sparse = sparse or SparseSpec()
        # A SparseEncoder (SPLADE) checkpoint: its vectors are encode_sparse's; encode()
        # gives its dense ones only when asked for a pooling.
        self.sparse_model = sparse is not None
        self.prompts = dict(prompts or {})
        self.default_prompt_name = default_prompt_name
        self.default_prompt = None  # a prompt text for every text that names none
        self.architecture = architecture

    def configure(self, pooling: str | None = None, default_prompt_name: str | None = None,
                  default_prompt: str | None = None) -> None:
        """Override the checkpoint's pooling ("cls" or "mean") and default prompt: one of its
        prompts by name, or a prompt text (not both). None leaves a setting as it is."""
        if pooling is not None:
            if pooling not in POOLINGS[:2]:
                raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
            self.pooling = pooling
        if default_prompt_name is not None and default_prompt is not None:
            raise ValueError("give a default prompt name or a default prompt, not both")
        if default_prompt_name is not None:
            if default_prompt_name not in self.prompts:
                raise ValueError(f"default prompt name {default_prompt_name!r} is not one of "
                                 f"this model's prompts {sorted(self.prompts)}")
            self.default_prompt_name, self.default_prompt = default_prompt_name, None
        if default_prompt is not None:
            if not isinstance(default_prompt, str):
                raise TypeError(f"default_prompt must be a str, got "
                                f"{type(default_prompt).__name__}")
            self.default_prompt, self.default_prompt_name = default_prompt, None

    def pooling_of(self, pooling: str | None) -> str:
        """``pooling``, or (None) the model's own; a sparse (SPLADE) model has none to give:
        its vectors are encode_sparse's, and dense ones must be asked for by name."""
        if pooling is None and self.sparse_model:
            raise ValueError("this is a sparse (SPLADE) model: its vectors come from "
                             "encode_sparse(); pass pooling='cls' or 'mean' to get dense "
                             "vectors no one trained it for")
        return pooling or self.pooling

    @property
    def max_input_length(self) -> int:
        """The longest input in tokens, special tokens included: the model's max_len, or the
        shorter limit its tokenizer or sentence-transformers config sets."""
        return self.tokenizer.max_len

    @classmethod
    def load(cls, path, device="cpu", dtype: torch.dtype = torch.float32,
             revision: str | None = None, **engine_options) -> "TextModel":
        """The text model of a checkpoint (a directory, or a Hugging Face hub id such as
        "sentence-transformers/all-MiniLM-L6-v2" at ``revision``; it must have a vocabulary);
        its engine's ``text_model`` is this model."""
        loaded = load_checkpoint(path, device, dtype, revision, **engine_options)
        if loaded.tokenizer is None:
            raise ValueError(f"checkpoint {path} has no vocabulary (vocab.txt or "
                             "tokenizer.json), so it cannot tokenise text")
        return cls.of_loaded(loaded)

    @classmethod
    def of_loaded(cls, loaded: LoadedModel) -> "TextModel":
        """The text model of what pybert.loader built; ``text_model_of(loaded.engine)`` finds
        it again (what ``pybert.encode(engine, texts)`` uses)."""
        model = cls(loaded.engine, loaded.tokenizer, pooling=loaded.pooling,
                    normalize=loaded.normalize, nsp_is_next_label=loaded.nsp_is_next_label,
                    dense=loaded.dense, classifier=loaded.classifier, sparse=loaded.sparse,
                    prompts=loaded.prompts, default_prompt_name=loaded.default_prompt_name,
                    architecture=loaded.architecture)
        _remember(model)
        return model

    @classmethod
    def for_vocab(cls, engine, vocab, text_format: str = "wikitext") -> "TextModel":
        """A d2l-style text model: the word tokenizer of ``vocab`` (a Vocab or its tokens)."""
        if not isinstance(vocab, Vocab):
            vocab = Vocab.from_tokens(vocab)
        if len(vocab) != engine.config.vocab_size:
            raise ValueError(f"vocab has {len(vocab)} tokens but the model's vocab_size is "
                             f"{engine.config.vocab_size}")
        return cls(engine, WordTokenizer(vocab, engine.config.max_len, text_format))

    @classmethod
    def from_model(cls, net: torch.nn.Module, vocab, text_format: str = "wikitext",
                   device="cpu", dtype: torch.dtype = torch.float32,
                   **engine_options) -> "TextModel":
        """A text model of an eager d2l ``BERTModel`` and its vocabulary (``text_model_of``
        finds it from its engine)."""
        engine = Engine.from_model(net, device=device, dtype=dtype, **engine_options)
        model = cls.for_vocab(engine, vocab, text_format)
        _remember(model)
        return model

    @property
    def vocab(self):
        """The word vocabulary of a d2l-style model (None for a Hugging Face tokenizer)."""
        return getattr(self.tokenizer, "vocab", None)

    @property
    def dim(self) -> int:
        """The width of a pooled vector (after the Dense modules, if any)."""
        return self.dense.out_features if self.dense is not None else \
            self.engine.config.num_hiddens

    @property
    def tasks(self) -> list[str]:
        """What this model serves: "embed" always; "classify" with a sequence classifier,
        "rerank" if it has one output; "sparse" and "fill-mask" with an MLM head;
        "next-sentence" with an NSP head."""
        tasks = ["embed"]
        if self.classifier is not None:
            tasks += ["classify"] + (["rerank"] if len(self.classifier.labels) == 1 else [])
        if self.engine.has_mlm:
            tasks += ["sparse"] + (["fill-mask"] if self.tokenizer.mask_id is not None else [])
        if self.engine.has_nsp:
            tasks.append("next-sentence")
        return tasks

    def prompted(self, items: list, prompt_name: str | None = None,
                 prompt: str | None = None) -> list:
        """``items`` with the prompt prepended (to the first text of a pair): ``prompt``, or
        the model's prompt named ``prompt_name``, or its default prompt, or none."""
        if prompt is None and prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(f"prompt_name {prompt_name!r} is not one of this model's "
                                 f"prompts {sorted(self.prompts)}")
            prompt = self.prompts[prompt_name]
        elif prompt is None and self.default_prompt is not None:
            prompt = self.default_prompt
        elif prompt is None and self.default_prompt_name is not None:
            prompt = self.prompts[self.default_prompt_name]
        if prompt is not None and not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        if not prompt:
            return items
        return [prompt + item if isinstance(item, str) else
                (prompt + item[0], item[1]) if isinstance(item, (tuple, list)) and len(item) == 2
                and isinstance(item[0], str) else item for item in items]

    def check_dimensions(self, dimensions: int | None) -> int | None:
        """``dimensions`` (Matryoshka: keep the first d values) checked against the model."""
        if dimensions is not None and (isinstance(dimensions, bool) or
                                       not isinstance(dimensions, int) or
                                       not 1 <= dimensions <= self.dim):
            raise ValueError(f"dimensions must be an int in [1, {self.dim}] (the model's "
                             f"width), got {dimensions!r}")
        return dimensions

    def __repr__(self) -> str:
        return (f"TextModel({self.engine!r}, tokenizer={type(self.tokenizer).__name__}, "
                f"pooling={self.pooling!r}, normalize={self.normalize})")

    # -- vectors ----------------------------------------------------------------------------

    def encode(self, texts, pooling: str | None = None, return_type: str = "numpy",
               batch_tokens: int = BATCH_TOKENS, truncation: str = "warn", *,
               prompt_name: str | None = None, prompt: str | None = None,
               dimensions: int | None = None, truncation_side: str | None = None):
        """Vectors of ``texts`` (a str, or a list of str and (text_a, text_b) pairs), in order.

        pooling "cls" (the first token's encoding) or "mean" (mean over real tokens; default:
        the model's own) gives an (N, D) array: through the model's Dense modules, cut to the
        first ``dimensions`` values, then L2-normalised if the model normalises; "tokens" gives
        a list of (len_i, H) arrays. ``prompt`` / ``prompt_name`` (default: the model's default
        prompt) is prepended to each text; texts too long are cut from ``truncation_side``
        (default: the tokenizer's). return_type "numpy" or "torch"."""
        if return_type not in ("numpy", "torch"):
            raise ValueError(f"return_type must be 'numpy' or 'torch', got {return_type!r}")
        pooling = self.pooling_of(pooling)
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        rows = [row for chunk in self.iter_encode(items, pooling, batch_tokens,
                                                  chunk_size=max(1, len(items)),
                                                  truncation=truncation, prompt_name=prompt_name,
                                                  prompt=prompt, dimensions=dimensions,
                                                  truncation_side=truncation_side)
                for row in chunk]
        if pooling == "tokens":
            out = rows if return_type == "torch" else [r.numpy() for r in rows]
            return out[0] if single else out
        stacked = torch.stack(rows) if rows else torch.zeros((0, dimensions or self.dim))
        if single:
            stacked = stacked[0]
        return stacked if return_type == "torch" else np.ascontiguousarray(stacked.numpy())

    def encode_long(self, texts, pooling: str | None = None, overlap: int = 64,
                    batch_tokens: int = BATCH_TOKENS, return_type: str = "numpy", *,
                    prompt_name: str | None = None, prompt: str | None = None,
                    dimensions: int | None = None, max_windows: int = MAX_WINDOWS):
        """Vectors of texts of any length, none cut: a text longer than the model's max_len is
        split into windows of max_len tokens (its special tokens around each) that overlap by
        ``overlap`` tokens; each window is encoded and pooled, and the text's vector is the
        mean of its windows' (weighted by their tokens under mean pooling), then through the
        model's Dense modules, ``dimensions`` and normalisation as :meth:`encode`. A text of n
        tokens costs about n / (max_len - overlap) windows; a call of more than
        ``max_windows`` windows in all is refused before any is run. Windows are made and run
        a batch at a time, never all held at once. Texts only (no pairs)."""
        if return_type not in ("numpy", "torch"):
            raise ValueError(f"return_type must be 'numpy' or 'torch', got {return_type!r}")
        pooling = self.pooling_of(pooling)
        if pooling not in POOLINGS[:2]:
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        check_int(batch_tokens, "batch_tokens")
        self.check_dimensions(dimensions)
        check_int(max_windows, "max_windows")
        single = isinstance(texts, str)
        items = self.prompted([texts] if single else list(texts), prompt_name, prompt)
        windows = []
        for i, text in enumerate(items):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str (encode_long takes no pairs), got "
                                f"{type(text).__name__}")
            windows.append(self.tokenizer.windows(text, overlap))
        count = sum(len(w) for w in windows)
        if count > max_windows:
            raise ValueError(f"these texts make {count} windows of {self.tokenizer.max_len} "
                             f"tokens with overlap={overlap}, more than max_windows="
                             f"{max_windows}: lower the overlap (each window adds "
                             f"{self.tokenizer.max_len - overlap} new tokens at most)")
        sums = torch.zeros((len(items), self.engine.config.num_hiddens), dtype=torch.float64)
        totals = torch.zeros(len(items), dtype=torch.float64)
        for owners, batch in _window_batches(windows, batch_tokens):
            packed, cu_seqlens = self.forward_tokenized(batch)
            pooled = _pool(packed, cu_seqlens, pooling, False).double()
            weights = torch.tensor([float(len(ids)) if pooling == "mean" else 1.0
                                    for ids, _ in batch], dtype=torch.float64)
            owner = torch.tensor(owners, dtype=torch.int64)
            sums.index_add_(0, owner, pooled * weights[:, None])
            totals.index_add_(0, owner, weights)
        vectors = _after_pooling((sums / totals[:, None]).float(), self.normalize, self.dense,
                                 dimensions)
        if single:
            vectors = vectors[0]
        return vectors if return_type == "torch" else np.ascontiguousarray(vectors.numpy())

    def iter_encode(self, texts: Iterable, pooling: str | None = None,
                    batch_tokens: int = BATCH_TOKENS, chunk_size: int = 4096,
                    truncation: str = "warn", prefetch: int = 4, **options) -> Iterator[list]:
        """Yield the results of each chunk of ``texts``, in input order: a list of (D,) float32
        tensors (pooled) or of (len, H) tensors (pooling="tokens"). ``options``:
        :meth:`encode`'s prompt_name, prompt, dimensions, truncation_side."""
        return self.iter_task(texts, "embed", pooling=pooling, batch_tokens=batch_tokens,
                              chunk_size=chunk_size, truncation=truncation, prefetch=prefetch,
                              **options)

    def iter_task(self, texts: Iterable, task: str = "embed", *, pooling: str | None = None,
                  batch_tokens: int = BATCH_TOKENS, chunk_size: int = 4096,
                  truncation: str = "warn",
                  prefetch: int = 4, prompt_name: str | None = None, prompt: str | None = None,
                  dimensions: int | None = None, truncation_side: str | None = None,
                  raw_scores: bool = False, truncated: TruncationCount | None = None,
                  on_batch: Callable[[int], None] | None = None) -> Iterator[list]:
        """Yield the results of ``task`` for each chunk of ``texts``, in input order, a chunk
        at a time (bounded memory): "embed" as :meth:`iter_encode`, "classify" a (labels,)
        tensor of scores per text (logits with ``raw_scores``), "sparse" a SparseVector per
        text. Texts are tokenised on a worker thread while the engine runs. The texts cut to
        max_len are counted in ``truncated`` (without one: one warning at the end);
        ``on_batch(rows)`` is called after each engine batch (a progress bar's step)."""
        compute = self._task_compute(task, pooling, dimensions, raw_scores)
        check_int(chunk_size, "chunk_size")
        check_int(batch_tokens, "batch_tokens")
        check_truncation(truncation)
        check_side(truncation_side)
        self.prompted([], prompt_name, prompt)  # a bad prompt name fails here, not in a thread
        if task == "sparse":  # the MLM logits of a batch stay under SPARSE_LOGITS_BYTES
            batch_tokens = min(batch_tokens, self._logit_rows_budget())
        batches: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()
        count = TruncationCount() if truncated is None else truncated
        encode = (lambda chunk, start: self.tokenizer.encode_all(
            self.prompted(chunk, prompt_name, prompt), truncation, start, truncation_side,
            count))
        worker = threading.Thread(target=self._produce, daemon=True, name="pybert-tokenize",
                                  args=(iter(texts), chunk_size, batch_tokens, encode,
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
                else:
                    results = compute(item)
                    state = pending[item.chunk]
                    for j, r in enumerate(item.rows):
                        state["rows"][r] = results[j]
                    if on_batch is not None:
                        on_batch(len(item.rows))
                    state["left"] -= 1
                while next_chunk in pending and pending[next_chunk]["left"] == 0:
                    yield pending.pop(next_chunk)["rows"]
                    next_chunk += 1
        finally:
            stop.set()
            worker.join(timeout=5)
        if truncated is None and count.summary() is not None:
            warnings.warn(count.summary(), stacklevel=2)

    def _task_compute(self, task: str, pooling: str | None, dimensions: int | None,
                      raw_scores: bool):
        """What one packed batch of ``task`` computes (checked here, before any work)."""
        if task == "embed":
            pooling = self.pooling_of(pooling)
            if pooling not in POOLINGS:
                raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
            self.check_dimensions(dimensions)
            return lambda b: _pool(self.engine.encode_packed(b.tokens, b.cu_seqlens, b.segments),
                                   b.cu_seqlens, pooling, self.normalize, self.dense, dimensions)
        if task == "classify":
            activation = "identity" if raw_scores else self._need_classifier().score_activation
            return lambda b: score(self.classify_encodings(
                self.engine.encode_packed(b.tokens, b.cu_seqlens, b.segments), b.cu_seqlens),
                activation)
        if task == "sparse":
            if not self.engine.has_mlm:
                raise ValueError("this model has no MLM head, so it gives no sparse vectors")
            return lambda b: self.sparse_tokenized(b.sequences)
        raise ValueError(f"task must be 'embed', 'classify' or 'sparse', got {task!r}")

    def _logit_rows_budget(self) -> int:
        """Rows of vocabulary logits (sparse tokens, fill-mask masks) one engine call holds."""
        return max(1, SPARSE_LOGITS_BYTES // (4 * self.engine.config.vocab_size))

    def _produce(self, items: Iterator, chunk_size: int, batch_tokens: int, encode,
                 out: queue.Queue, stop: threading.Event) -> None:
        """Worker thread: tokenise chunk after chunk and queue packed batches, then _DONE (or
        the exception that stopped it)."""
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
                encoded = encode(chunk, start)
                start += len(chunk)
                batches = plan_batches([len(ids) for ids, _ in encoded], batch_tokens)
                if not put(("chunk", chunk_index, len(chunk), len(batches))):
                    return
                for rows in batches:
                    if not put(_Batch(chunk_index, rows, *pack_batch(encoded, rows),
                                      [encoded[r] for r in rows])):
                        return
            put(_DONE)
        except BaseException as err:  # handed to the consumer, which raises it
            put(err)

    def forward_tokenized(self, encoded: list):
        """(packed encodings (total_tokens, H), cu_seqlens) of texts already tokenised by
        ``self.tokenizer`` (a list of (ids, segments)), run as one packed batch: what a
        server's batcher calls with the sequences of many requests."""
        tokens, segments, cu_seqlens = pack_batch(encoded, range(len(encoded)))
        return self.engine.encode_packed(tokens, cu_seqlens, segments), cu_seqlens

    def pool_encodings(self, packed: torch.Tensor, cu_seqlens: torch.Tensor,
                       pooling: str | None = None, normalize: bool | None = None,
                       dimensions: int | None = None) -> torch.Tensor:
        """(B, D) float32 vectors of packed encodings, as :meth:`encode` makes them;
        ``normalize`` defaults to the model's own."""
        pooling = pooling or self.pooling
        if pooling not in POOLINGS[:2]:
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        return _pool(packed, cu_seqlens, pooling,
                     self.normalize if normalize is None else normalize, self.dense,
                     self.check_dimensions(dimensions))

    def encode_tokenized(self, encoded: list, pooling: str | None = None,
                         normalize: bool | None = None,
                         dimensions: int | None = None) -> torch.Tensor:
        """(N, D) float32 vectors of texts already tokenised, run as one packed batch."""
        if not encoded:
            return torch.zeros((0, dimensions or self.dim))
        packed, cu_seqlens = self.forward_tokenized(encoded)
        return self.pool_encodings(packed, cu_seqlens, pooling, normalize, dimensions)

    def run_tasks(self, requests: list) -> list:
        """The results of several requests' (task, encoded[, options]) in as few engine calls
        as their tasks allow: what a server's batcher runs. Tasks: "embed" ((N, D) vectors, not
        normalised), "embed_all" (a list of (len, H) per-token vectors), "classify" ((N, labels)
        logits) share one packed forward; "sparse" (SparseVectors), "fill_mask" (options
        {"k": top k}) and "next_sentence" (probabilities) each run with their own kind only."""
        tasks = {request[0] for request in requests}
        sequences = [item for request in requests for item in request[1]]
        apart = sorted(t for t in tasks if task_of(t).forward != "encoder")
        if apart:
            if len(tasks) != 1:
                raise ValueError(f"{apart} requests run apart from the others")
            return self._run_separate(tasks.pop(), requests, sequences)
        packed, cu_seqlens = self.forward_tokenized(sequences)
        results, first = [], 0
        for task, encoded, *_ in requests:
            last = first + len(encoded)
            rows = packed[int(cu_seqlens[first]):int(cu_seqlens[last])]
            cu = cu_seqlens[first:last + 1] - cu_seqlens[first]
            if task == "embed":
                results.append(self.pool_encodings(rows, cu, normalize=False))
            elif task == "embed_all":
                results.append(_pool(rows, cu, "tokens", False))
            elif task == "classify":
                results.append(self.classify_encodings(rows, cu))
            else:
                raise ValueError(f"unknown task {task!r}")
            first = last
        return results

    def _run_separate(self, task: str, requests: list, sequences: list) -> list:
        if task == "sparse":
            answers = self.sparse_tokenized(sequences)
        elif task == "fill_mask":
            k = max(request[2]["k"] for request in requests)
            answers = self.fill_mask_tokenized(sequences, k)
        else:
            answers = list(self.next_sentence_tokenized(sequences))
        results, start = [], 0
        for request in requests:
            part = answers[start:start + len(request[1])]
            if task == "fill_mask":  # each request its own k
                part = [[guesses[:request[2]["k"]] for guesses in text] for text in part]
            results.append(part)
            start += len(request[1])
        return results

    # -- the heads --------------------------------------------------------------------------

    def _tokenised(self, texts, truncation: str, side: str | None = None):
        items = [texts] if isinstance(texts, (str, tuple)) else list(texts)
        return items, self.tokenizer.encode_all(items, truncation, 0, side)

    def _need_classifier(self, one_label: bool = False):
        if self.classifier is None:
            raise ValueError("this model has no sequence classifier (load a "
                             "*ForSequenceClassification or CrossEncoder checkpoint)")
        if one_label and len(self.classifier.labels) != 1:
            raise ValueError(f"rerank needs a classifier with one output (a relevance score); "
                             f"this one has {len(self.classifier.labels)} labels: use classify")
        return self.classifier

    def classify_encodings(self, packed: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """(B, labels) float32 logits on the CPU of the classifier on each sequence's first
        token (or the mean of its tokens, as the classifier pools), from packed encodings."""
        classifier = self._need_classifier()
        return _finite(classifier.head(_pooled(packed, cu_seqlens, classifier.pooling)).cpu(),
                       "the classifier's logits")

    def classify(self, texts, raw_scores: bool = False, truncation: str = "warn",
                 batch_tokens: int = BATCH_TOKENS,
                 truncation_side: str | None = None) -> np.ndarray:
        """Scores of the sequence classifier for each text or (text_a, text_b) pair: (N, labels)
        float32, through the checkpoint's activation (a CrossEncoder's, else sigmoid for one
        label or multi-label, softmax otherwise), or the logits with ``raw_scores``."""
        classifier = self._need_classifier()
        items = [texts] if isinstance(texts, (str, tuple)) else list(texts)
        rows = [row for chunk in self.iter_task(
            items, "classify", batch_tokens=batch_tokens, chunk_size=max(1, len(items)),
            truncation=truncation, truncation_side=truncation_side, raw_scores=raw_scores)
            for row in chunk]
        out = torch.stack(rows).numpy() if rows else np.zeros((0, len(classifier.labels)),
                                                              np.float32)
        return out[0] if isinstance(texts, (str, tuple)) else out

    def rerank(self, query: str, documents, top_k: int | None = None,
               raw_scores: bool = False, truncation: str = "warn", batch_tokens: int = BATCH_TOKENS,
               truncation_side: str | None = None) -> list[dict]:
        """The ``documents`` ordered by the cross-encoder's relevance to ``query``, best first:
        [{"index": i, "score": s}, ...], the first ``top_k`` (default: all)."""
        self._need_classifier(one_label=True)
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        documents = [documents] if isinstance(documents, str) else list(documents)
        if not documents:
            raise ValueError("documents must hold at least one text")
        bad = [i for i, d in enumerate(documents) if not isinstance(d, str)]
        if bad:
            raise TypeError(f"documents[{bad[0]}] must be a str, got "
                            f"{type(documents[bad[0]]).__name__}")
        if top_k is not None:
            check_int(top_k, "top_k")
        scores = self.classify([(query, d) for d in documents], raw_scores, truncation,
                               batch_tokens, truncation_side)[:, 0]
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [{"index": int(i), "score": float(scores[i])} for i in order]

    def sparse_tokenized(self, encoded: list) -> list[SparseVector]:
        """SPLADE vectors of texts already tokenised: the MLM logits of every token, through
        the model's sparse activation and pooling, in batches whose logits stay under
        SPARSE_LOGITS_BYTES."""
        if not self.engine.has_mlm:
            raise ValueError("this model has no MLM head, so it gives no sparse vectors")
        out: list = [None] * len(encoded)
        budget = self._logit_rows_budget()
        for rows in plan_batches([len(ids) for ids, _ in encoded], budget):
            tokens, segments, valid_lens = pad_batch(encoded, rows, self.tokenizer.pad_id)
            weights = _finite(self._sparse_weights(tokens, segments, valid_lens, budget),
                              "the sparse weights").cpu()
            for j, r in enumerate(rows):
                nonzero = torch.nonzero(weights[j]).flatten()
                out[r] = SparseVector(nonzero.numpy(), weights[j, nonzero].numpy())
        return out

    def _sparse_weights(self, tokens, segments, valid_lens, budget: int) -> torch.Tensor:
        """(B, V) SPLADE weights of a padded batch, its MLM logits computed for at most
        ``budget`` rows at a time: a sequence longer than the budget alone in its batch has its
        positions taken a slice at a time (the encoder runs again for each; its logits would
        not fit), the slices' weights pooled together."""
        step = max(1, budget // len(valid_lens))
        weights = None
        for start in range(0, tokens.shape[1], step):
            positions = torch.arange(start, min(tokens.shape[1], start + step)).repeat(
                len(valid_lens), 1)
            positions[positions >= valid_lens[:, None]] = 0  # padding: scored, then ignored
            _, mlm, _ = self.engine(tokens, segments, valid_lens, positions)
            part = sparse_pool(mlm, (valid_lens - start).clamp(0, positions.shape[1]),
                               self.sparse.pooling, self.sparse.activation)
            del mlm
            weights = part if weights is None else torch.maximum(weights, part) \
                if self.sparse.pooling == "max" else weights + part
        return weights

    def encode_sparse(self, texts, truncation: str = "warn", batch_tokens: int = BATCH_TOKENS, *,
                      prompt_name: str | None = None, prompt: str | None = None,
                      truncation_side: str | None = None):
        """SPLADE's sparse lexical vector of each text: a :class:`SparseVector` (the non-zero
        vocabulary ids and their weights), or a list of them."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        out = [row for chunk in self.iter_task(
            items, "sparse", batch_tokens=batch_tokens, chunk_size=max(1, len(items)),
            truncation=truncation, prompt_name=prompt_name, prompt=prompt,
            truncation_side=truncation_side) for row in chunk]
        return out[0] if single else out

    def fill_mask(self, texts, k: int = 5, truncation: str = "warn",
                  batch_tokens: int = BATCH_TOKENS):
        """Top-``k`` words for each mask token in each text (or (text_a, text_b) pair): a list
        per text of a list per mask of (word, probability)."""
        self._check_fill_mask(k)
        _, encoded = self._tokenised(texts, truncation)
        results = self.fill_mask_tokenized(encoded, k, batch_tokens)
        return results[0] if isinstance(texts, (str, tuple)) else results

    def _check_fill_mask(self, k: int) -> None:
        vocab = self.engine.config.vocab_size
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
            raise ValueError(f"k must be an int in [1, vocab_size={vocab}], got {k!r}")
        if not self.engine.has_mlm:
            raise ValueError("this model has no MLM head")
        if self.tokenizer.mask_id is None:
            raise ValueError("this tokenizer has no mask token")

    def mask_positions(self, encoded: list) -> list[list[int]]:
        """The positions of the mask token in each (ids, segments)."""
        mask_id = self.tokenizer.mask_id
        return [[p for p, t in enumerate(ids) if t == mask_id] for ids, _ in encoded]

    def fill_mask_tokenized(self, encoded: list, k: int, batch_tokens: int = BATCH_TOKENS) -> list:
        """fill_mask's answer for texts already tokenised. The vocabulary logits are computed
        for batches of at most SPARSE_LOGITS_BYTES and cut to the top k at once, so memory does
        not grow with the number of masks."""
        self._check_fill_mask(k)
        masks = self.mask_positions(encoded)
        results: list = [[] for _ in encoded]
        budget = self._logit_rows_budget()  # mask rows whose logits fit the budget
        for token_rows in plan_batches([len(ids) for ids, _ in encoded], batch_tokens):
            for rows in plan_batches([max(1, len(masks[r])) for r in token_rows], budget):
                rows = [token_rows[i] for i in rows]
                tokens, segments, valid_lens = pad_batch(encoded, rows, self.tokenizer.pad_id)
                width = max(1, max(len(masks[r]) for r in rows))
                positions = torch.zeros((len(rows), width), dtype=torch.int64)
                for j, r in enumerate(rows):
                    positions[j, : len(masks[r])] = torch.tensor(masks[r], dtype=torch.int64)
                _, mlm, _ = self.engine(tokens, segments, valid_lens, positions)
                top = torch.topk(torch.softmax(_finite(mlm.float(), "the MLM logits"), -1), k,
                                 dim=-1)
                del mlm
                probs, ids = top.values.cpu(), top.indices.cpu()
                for j, r in enumerate(rows):
                    results[r] = [[(self.tokenizer.id_to_token(int(i)), float(p))
                                   for i, p in zip(ids[j, m], probs[j, m])]
                                  for m in range(len(masks[r]))]
        return results

    def next_sentence(self, pairs, truncation: str = "warn",
                      batch_tokens: int = BATCH_TOKENS) -> np.ndarray:
        """P(text_b follows text_a) for each (text_a, text_b) pair, from the NSP head."""
        items = [pairs] if isinstance(pairs, tuple) else list(pairs)
        if not all(isinstance(i, tuple) or (isinstance(i, list) and len(i) == 2)
                   for i in items):
            raise TypeError("next_sentence takes (text_a, text_b) pairs")
        if not self.engine.has_nsp:
            raise ValueError("this model has no NSP head")
        _, encoded = self._tokenised(items, truncation)
        result = self.next_sentence_tokenized(encoded, batch_tokens)
        return result[0] if isinstance(pairs, tuple) else result

    def next_sentence_tokenized(self, encoded: list,
                                batch_tokens: int = BATCH_TOKENS) -> np.ndarray:
        """next_sentence's answer for pairs already tokenised."""
        if not self.engine.has_nsp:
            raise ValueError("this model has no NSP head")
        result = np.zeros(len(encoded), dtype=np.float64)
        for rows in plan_batches([len(ids) for ids, _ in encoded], batch_tokens):
            tokens, segments, valid_lens = pad_batch(encoded, rows, self.tokenizer.pad_id)
            _, _, nsp = self.engine(tokens, segments, valid_lens)
            probs = torch.softmax(_finite(nsp.double(), "the NSP logits"),
                                  -1)[:, self.nsp_is_next_label]
            result[rows] = probs.cpu().numpy()
        return result


# The engine knows nothing of text, and holds no pointer to a text model. What made the text
# model of an engine that pybert.load built (its tokenizer, pooling, heads) is kept here, by
# engine, for as long as the engine lives; it references the engine nowhere, so it keeps
# nothing alive.
_TEXT_PARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _remember(model: TextModel) -> None:
    _TEXT_PARTS[model.engine] = {k: v for k, v in vars(model).items() if k != "engine"}


def text_model_of(model) -> TextModel:
    """``model`` as a TextModel: a TextModel, or an Engine loaded with one (pybert.load of a
    checkpoint with a vocabulary)."""
    if isinstance(model, TextModel):
        return model
    parts = _TEXT_PARTS.get(model) if isinstance(model, Engine) else None
    text_model = None
    if parts is not None:
        text_model = TextModel.__new__(TextModel)
        text_model.__dict__.update(parts, engine=model)
    if text_model is None:
        raise ValueError("this engine has no vocabulary, so it cannot tokenise text: load a "
                         "checkpoint with a vocab.txt (pybert.TextModel.load) or build a "
                         "pybert.TextModel(engine, tokenizer)")
    return text_model
