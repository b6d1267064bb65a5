"""Texts in, vectors out: the text model around an engine.

A :class:`TextModel` is an :class:`~pybert.Engine` plus what turns texts into its inputs and
its outputs into answers: the checkpoint's tokenizer, its pooling ("cls" or "mean") and
normalisation (a sentence-transformers model's), and which NSP class means "b follows a".

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .config import check_positive_int
from .engine import Engine
from .loader import LoadedModel, load_checkpoint
from .tokenization import Vocab, WordTokenizer, check_truncation

__all__ = ["TextModel", "text_model_of", "plan_batches", "pack_batch", "pad_batch", "POOLINGS"]

POOLINGS = ("cls", "mean", "tokens")


def plan_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches: sorted by length (longest first), each batch holding at
    most ``batch_tokens`` padded tokens (batch size x its longest length); a sequence longer
    than the budget gets a batch of its own."""
    check_positive_int(batch_tokens, "batch_tokens")
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


@dataclass
class _Batch:
    """One batch of a chunk, packed: no padding is built, sent or computed."""

    chunk: int               # which chunk of the input
    rows: list[int]          # positions inside the chunk
    tokens: torch.Tensor     # (total_tokens,) the rows' ids one after another
    segments: torch.Tensor   # (total_tokens,)
    cu_seqlens: torch.Tensor  # (len(rows) + 1,)


_DONE = object()


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


class TextModel:
    """Texts in, vectors out: ``tokenizer`` + ``engine`` + ``pooling`` (+ ``normalize``).

    Build one with :meth:`load` (a pybert, Hugging Face or sentence-transformers checkpoint)
    or :meth:`from_model` (an eager model and its vocabulary). ``encode`` gives vectors,
    ``fill_mask`` the MLM head's words, ``next_sentence`` the NSP head's probability.
    """

    def __init__(self, engine, tokenizer, pooling: str = "cls", normalize: bool = False,
                 nsp_is_next_label: int = 1):
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

    @classmethod
    def load(cls, path, device="cpu", dtype: torch.dtype = torch.float32,
             **engine_options) -> "TextModel":
        """The text model of a checkpoint directory (it must have a vocabulary); its engine's
        ``text_model`` is this model."""
        loaded = load_checkpoint(path, device, dtype, **engine_options)
        if loaded.tokenizer is None:
            raise ValueError(f"checkpoint {path} has no vocabulary (vocab.txt or "
                             "tokenizer.json), so it cannot tokenise text")
        return cls.of_loaded(loaded)

    @classmethod
    def of_loaded(cls, loaded: LoadedModel) -> "TextModel":
        """The text model of what pybert.loader built; it becomes ``loaded.engine.text_model``
        (what ``pybert.encode(engine, texts)`` uses)."""
        model = cls(loaded.engine, loaded.tokenizer, pooling=loaded.pooling,
                    normalize=loaded.normalize, nsp_is_next_label=loaded.nsp_is_next_label)
        loaded.engine.text_model = model
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
        """A text model of an eager d2l ``BERTModel`` and its vocabulary; its engine's
        ``text_model`` is this model."""
        engine = Engine.from_model(net, device=device, dtype=dtype, **engine_options)
        model = cls.for_vocab(engine, vocab, text_format)
        engine.text_model = model
        return model

    @property
    def vocab(self):
        """The word vocabulary of a d2l-style model (None for a WordPiece tokenizer)."""
        return getattr(self.tokenizer, "vocab", None)

    @property
    def dim(self) -> int:
        return self.engine.config.num_hiddens

    def __repr__(self) -> str:
        return (f"TextModel({self.engine!r}, tokenizer={type(self.tokenizer).__name__}, "
                f"pooling={self.pooling!r}, normalize={self.normalize})")

    # -- vectors ----------------------------------------------------------------------------

    def encode(self, texts, pooling: str | None = None, return_type: str = "numpy",
               batch_tokens: int = 16384, truncation: str = "warn"):
        """Vectors of ``texts`` (a str, or a list of str and (text_a, text_b) pairs), in order.

        pooling "cls" (the <cls> encoding) or "mean" (mean over real tokens; default: the
        model's own) gives an (N, H) array, L2-normalised if the model normalises; "tokens"
        gives a list of (len_i, H) arrays. return_type "numpy" or "torch"."""
        if return_type not in ("numpy", "torch"):
            raise ValueError(f"return_type must be 'numpy' or 'torch', got {return_type!r}")
        pooling = pooling or self.pooling
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        rows = [row for chunk in self.iter_encode(items, pooling, batch_tokens,
                                                  chunk_size=max(1, len(items)),
                                                  truncation=truncation)
                for row in chunk]
        if pooling == "tokens":
            out = rows if return_type == "torch" else [r.numpy() for r in rows]
            return out[0] if single else out
        stacked = torch.stack(rows) if rows else torch.zeros((0, self.dim))
        if single:
            stacked = stacked[0]
        return stacked if return_type == "torch" else np.ascontiguousarray(stacked.numpy())

    def iter_encode(self, texts: Iterable, pooling: str | None = None,
                    batch_tokens: int = 16384, chunk_size: int = 4096,
                    truncation: str = "warn", prefetch: int = 4) -> Iterator[list]:
        """Yield the results of each chunk of ``texts``, in input order: a list of (H,) float32
        tensors (pooled) or of (len, H) tensors (pooling="tokens")."""
        pooling = pooling or self.pooling
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        check_positive_int(chunk_size, "chunk_size")
        check_positive_int(batch_tokens, "batch_tokens")
        check_truncation(truncation)
        batches: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, daemon=True, name="pybert-tokenize",
                                  args=(iter(texts), chunk_size, batch_tokens, truncation,
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
                    packed = self.engine.encode_packed(item.tokens, item.cu_seqlens,
                                                       item.segments)
                    pooled = _pool(packed, item.cu_seqlens, pooling, self.normalize)
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

    def _produce(self, items: Iterator, chunk_size: int, batch_tokens: int, truncation: str,
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
                encoded = self.tokenizer.encode_all(chunk, truncation, start=start)
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

    def encode_tokenized(self, encoded: list, pooling: str | None = None,
                         normalize: bool | None = None) -> torch.Tensor:
        """(N, H) float32 vectors of texts already tokenised by ``self.tokenizer`` (a list of
        (ids, segments)), run as one packed batch: what a server's batcher calls with the
        sequences of many requests. ``normalize`` defaults to the model's own."""
        pooling = pooling or self.pooling
        if pooling not in POOLINGS[:2]:
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        if not encoded:
            return torch.zeros((0, self.dim))
        tokens, segments, cu_seqlens = pack_batch(encoded, range(len(encoded)))
        packed = self.engine.encode_packed(tokens, cu_seqlens, segments)
        return _pool(packed, cu_seqlens, pooling,
                     self.normalize if normalize is None else normalize)

    # -- the heads --------------------------------------------------------------------------

    def _tokenised(self, texts, truncation: str):
        items = [texts] if isinstance(texts, (str, tuple)) else list(texts)
        return items, self.tokenizer.encode_all(items, truncation)

    def fill_mask(self, texts, k: int = 5, truncation: str = "warn",
                  batch_tokens: int = 16384):
        """Top-``k`` words for each mask token in each text (or (text_a, text_b) pair): a list
        per text of a list per mask of (word, probability)."""
        engine = self.engine
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= engine.config.vocab_size:
            raise ValueError(f"k must be an int in [1, vocab_size={engine.config.vocab_size}], "
                             f"got {k!r}")
        if not engine.has_mlm:
            raise ValueError("this model has no MLM head")
        if self.tokenizer.mask_id is None:
            raise ValueError("this tokenizer has no mask token")
        items, encoded = self._tokenised(texts, truncation)
        mask_id = self.tokenizer.mask_id
        masks = [[p for p, t in enumerate(ids) if t == mask_id] for ids, _ in encoded]
        results: list = [[] for _ in items]
        for rows in plan_batches([len(ids) for ids, _ in encoded], batch_tokens):
            tokens, segments, valid_lens = pad_batch(encoded, rows, self.tokenizer.pad_id)
            width = max(1, max(len(masks[r]) for r in rows))
            positions = torch.zeros((len(rows), width), dtype=torch.int64)
            for j, r in enumerate(rows):
                positions[j, : len(masks[r])] = torch.tensor(masks[r], dtype=torch.int64)
            _, mlm, _ = engine(tokens, segments, valid_lens, positions)
            top = torch.topk(torch.softmax(mlm.float(), -1), k, dim=-1)
            probs, ids = top.values.cpu(), top.indices.cpu()
            for j, r in enumerate(rows):
                results[r] = [[(self.tokenizer.id_to_token(int(i)), float(p))
                               for i, p in zip(ids[j, m], probs[j, m])]
                              for m in range(len(masks[r]))]
        return results[0] if isinstance(texts, (str, tuple)) else results

    def next_sentence(self, pairs, truncation: str = "warn",
                      batch_tokens: int = 16384) -> np.ndarray:
        """P(text_b follows text_a) for each (text_a, text_b) pair, from the NSP head."""
        if not self.engine.has_nsp:
            raise ValueError("this model has no NSP head")
        items = [pairs] if isinstance(pairs, tuple) else list(pairs)
        if not all(isinstance(i, tuple) or (isinstance(i, list) and len(i) == 2)
                   for i in items):
            raise TypeError("next_sentence takes (text_a, text_b) pairs")
        _, encoded = self._tokenised(items, truncation)
        result = np.zeros(len(items), dtype=np.float64)
        for rows in plan_batches([len(ids) for ids, _ in encoded], batch_tokens):
            tokens, segments, valid_lens = pad_batch(encoded, rows, self.tokenizer.pad_id)
            _, _, nsp = self.engine(tokens, segments, valid_lens)
            probs = torch.softmax(nsp.double(), -1)[:, self.nsp_is_next_label]
            result[rows] = probs.cpu().numpy()
        return result[0] if isinstance(pairs, tuple) else result


def text_model_of(model) -> TextModel:
    """``model`` as a TextModel: a TextModel, or an Engine loaded with one."""
    if isinstance(model, TextModel):
        return model
    text_model = model.text_model if isinstance(model, Engine) else None
    if text_model is None:
        raise ValueError("this engine has no vocabulary, so it cannot tokenise text: load a "
                         "checkpoint with a vocab.txt (pybert.TextModel.load) or build a "
                         "pybert.TextModel(engine, tokenizer)")
    return text_model
