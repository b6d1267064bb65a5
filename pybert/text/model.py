"""The TextModel: an engine plus its tokenizer, prompts, pooling, Dense modules and heads, and
the API over them (encode, encode_long, classify, rerank, encode_sparse, fill_mask,
next_sentence), every task run through the registry of :mod:`pybert.tasks` on packed batches
(see the package's docstring)."""

from __future__ import annotations

import queue
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from ..checkpoint import SparseSpec
from ..config import BATCH_TOKENS, check_int
from ..engine import Engine, default_dtype, resolve_device
from ..heads import maxsim, score
from ..loader import LoadedModel, load_checkpoint
from ..tasks import TASKS, model_task
from ..tasks import task as task_of
from ..tokenization import TruncationCount, Vocab, WordTokenizer, check_side, check_truncation
from .batching import DONE, Batch, Chunk, pack_batch, produce_batches, window_batches
from .head_outputs import SparseVector, lexical_vectors, multi_vectors, next_sentence_probs, \
    sparse_vectors, top_words
from .pooling import POOLINGS, after_pooling, finite, pooled, token_vectors

__all__ = ["TextModel", "text_model_of", "load_text_model"]

# The windows one encode_long call may make (a 10^6-token text with an overlap one short of
# the window would make 10^6 of 512 tokens each).
MAX_WINDOWS = 100_000
# The MLM logits a sparse or fill-mask batch holds at once (rows x vocabulary x 4 bytes).
SPARSE_LOGITS_BYTES = 128 << 20


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
                 default_prompt_name: str | None = None, architecture: str = "BERT",
                 lexical=None, multi_vector=None):
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
        self.lexical = lexical            # BGE-M3's lexical head (a LinearHead), or None
        self.multi_vector = multi_vector  # BGE-M3's multi-vector head (a LinearHead), or None

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
                    architecture=loaded.architecture, lexical=loaded.lexical,
                    multi_vector=loaded.multi_vector)
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
        """The tasks of pybert.tasks this model serves (by its heads and its tokenizer)."""
        return [name for name, entry in TASKS.items() if entry.available(self)]

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
        for owners, batch in window_batches(windows, batch_tokens):
            packed, cu_seqlens = self.forward_tokenized(batch)
            vectors = pooled(packed, cu_seqlens, pooling).double()
            weights = torch.tensor([float(len(ids)) if pooling == "mean" else 1.0
                                    for ids, _ in batch], dtype=torch.float64)
            owner = torch.tensor(owners, dtype=torch.int64)
            sums.index_add_(0, owner, vectors * weights[:, None])
            totals.index_add_(0, owner, weights)
        vectors = after_pooling((sums / totals[:, None]).float(), self.normalize, self.dense,
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
        if pooling == "tokens":
            if options.pop("dimensions", None) is not None:
                raise ValueError("dimensions cuts pooled vectors; pooling='tokens' keeps every "
                                 "token's")
            return self.iter_task(texts, "embed_all", batch_tokens=batch_tokens,
                                  chunk_size=chunk_size, truncation=truncation,
                                  prefetch=prefetch, **options)
        return self.iter_task(texts, "embed", pooling=pooling, batch_tokens=batch_tokens,
                              chunk_size=chunk_size, truncation=truncation, prefetch=prefetch,
                              **options)

    # Long: one generator that owns its worker thread from start to cleanup
    def iter_task(self, texts: Iterable, task: str = "embed", *, pooling: str | None = None,
                  batch_tokens: int = BATCH_TOKENS, chunk_size: int = 4096,
                  truncation: str = "warn",
                  prefetch: int = 4, prompt_name: str | None = None, prompt: str | None = None,
                  dimensions: int | None = None, truncation_side: str | None = None,
                  raw_scores: bool = False, truncated: TruncationCount | None = None,
                  on_batch: Callable[[int], None] | None = None) -> Iterator[list]:
        """Yield the results of ``task`` (a name of pybert.tasks.TASKS) for each chunk of
        ``texts``, in input order, a chunk at a time (bounded memory): "embed" as
        :meth:`iter_encode`, "classify" a (labels,) tensor of scores per text (logits with
        ``raw_scores``), "sparse" a SparseVector per text. Texts are tokenised on a worker
        thread while the engine runs. The texts cut to max_len are counted in ``truncated``
        (without one: one warning at the end); ``on_batch(rows)`` is called after each engine
        batch (a progress bar's step)."""
        options = {name: value for name, value in (("pooling", pooling),
                                                   ("dimensions", dimensions),
                                                   ("raw_scores", raw_scores or None))
                   if value is not None}
        compute = self.batch_compute(task, options)
        check_int(chunk_size, "chunk_size")
        check_int(batch_tokens, "batch_tokens")
        check_truncation(truncation)
        check_side(truncation_side)
        self.prompted([], prompt_name, prompt)  # a bad prompt name fails here, not in a thread
        if task_of(task).forward == "mlm":  # a batch's vocabulary logits stay under the budget
            batch_tokens = min(batch_tokens, self.logit_rows_budget())
        batches: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()
        count = TruncationCount() if truncated is None else truncated
        encode = (lambda chunk, start: self.tokenizer.encode_all(
            self.prompted(chunk, prompt_name, prompt), truncation, start, truncation_side,
            count))
        worker = threading.Thread(target=produce_batches, daemon=True, name="pybert-tokenize",
                                  args=(iter(texts), chunk_size, batch_tokens, encode,
                                        batches, stop))
        worker.start()
        try:
            pending: dict[int, dict] = {}
            next_chunk = 0
            while True:
                item = batches.get()
                if item is DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Chunk):
                    pending[item.index] = {"rows": [None] * item.size, "left": item.batches}
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

    def batch_compute(self, task: str, options: dict | None = None) -> Callable[[Batch], list]:
        """What one packed Batch of ``task`` computes with ``options`` (checked here, before
        any work): the registry's computation, over the encoder's packed output or over the
        batch's sequences."""
        entry = task_of(task)
        options = entry.check(self, dict(options or {}))  # a task's own refusal says most
        if not entry.available(self):
            raise ValueError(f"{task} needs a model with {entry.needs}; this one serves "
                             f"{', '.join(self.tasks)}")
        if entry.forward == "encoder":
            return lambda b: entry.compute(
                self, self.engine.encode_packed(b.tokens, b.cu_seqlens, b.segments),
                b.cu_seqlens, options, *((b.tokens,) if entry.token_ids else ()))
        return lambda b: entry.compute(self, b.sequences, options)

    def logit_rows_budget(self) -> int:
        """Rows of vocabulary logits (sparse tokens, fill-mask masks) one engine call holds."""
        return max(1, SPARSE_LOGITS_BYTES // (4 * self.engine.config.vocab_size))

    def forward_tokenized(self, encoded: list, with_tokens: bool = False):
        """(packed encodings (total_tokens, H), cu_seqlens) of texts already tokenised by
        ``self.tokenizer`` (a list of (ids, segments)), run as one packed batch; with
        ``with_tokens``, the packed token ids (total_tokens,) too."""
        tokens, segments, cu_seqlens = pack_batch(encoded, range(len(encoded)))
        packed = self.engine.encode_packed(tokens, cu_seqlens, segments)
        return (packed, cu_seqlens, tokens) if with_tokens else (packed, cu_seqlens)

    def pool_encodings(self, packed: torch.Tensor, cu_seqlens: torch.Tensor,
                       pooling: str | None = None, normalize: bool | None = None,
                       dimensions: int | None = None) -> torch.Tensor:
        """(B, D) float32 vectors of packed encodings, as :meth:`encode` makes them;
        ``normalize`` defaults to the model's own."""
        pooling = pooling or self.pooling
        if pooling not in POOLINGS[:2]:
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        return after_pooling(pooled(packed, cu_seqlens, pooling),
                             self.normalize if normalize is None else normalize, self.dense,
                             self.check_dimensions(dimensions))

    @staticmethod
    def token_encodings(packed: torch.Tensor, cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
        """Each sequence's (len, H) float32 encodings of packed encodings."""
        return token_vectors(packed, cu_seqlens)

    def lexical_encodings(self, packed: torch.Tensor, cu_seqlens: torch.Tensor,
                          tokens: torch.Tensor) -> list[SparseVector]:
        """BGE-M3's lexical weights of packed encodings (see head_outputs.lexical_vectors)."""
        return lexical_vectors(self.lexical, packed, cu_seqlens, tokens,
                               getattr(self.tokenizer, "special_ids", ()))

    def multi_vector_encodings(self, packed: torch.Tensor,
                               cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
        """BGE-M3's multi-vector embeddings of packed encodings (see
        head_outputs.multi_vectors)."""
        return multi_vectors(self.multi_vector, packed, cu_seqlens)

    @property
    def multi_vector_dim(self) -> int | None:
        """The width of a multi-vector embedding (None without that head)."""
        return None if self.multi_vector is None else self.multi_vector.out_features

    @property
    def reranks_by_maxsim(self) -> bool:
        """Whether rerank scores by the late interaction of multi-vector embeddings (a model
        with that head and no classifier: BGE-M3), not by a cross-encoder."""
        return self.classifier is None and self.multi_vector is not None

    @property
    def sparse_task(self) -> str:
        """The task of this model's sparse vectors: BGE-M3's "lexical" weights where it has
        that head, else SPLADE's "sparse" (from the MLM logits)."""
        return "lexical" if self.lexical is not None else "sparse"

    def run_tasks(self, requests: list) -> list:
        """The results of several requests' (task, encoded[, options]) in as few engine calls
        as their tasks allow (the one batch entry point of the server, Ray and the tests):
        the "encoder" tasks of pybert.tasks share one packed forward, each request computed
        with its own options; a task with a head of its own runs with requests of its kind
        only, their options merged for the call and each request's part trimmed to its own."""
        entries = {task_of(request[0]).name: task_of(request[0]) for request in requests}
        checked = [entries[r[0]].check(self, dict(r[2] if len(r) > 2 else {}))
                   for r in requests]
        sequences = [item for request in requests for item in request[1]]
        apart = sorted(name for name, t in entries.items() if t.forward != "encoder")
        if apart:
            if len(entries) != 1:
                raise ValueError(f"{apart} requests run apart from the others")
            entry = entries[apart[0]]
            answers = entry.compute(self, sequences, entry.merge(checked))
            results, start = [], 0
            for request, options in zip(requests, checked):
                results.append(entry.trim(answers[start:start + len(request[1])], options))
                start += len(request[1])
            return results
        packed, cu_seqlens, tokens = self.forward_tokenized(sequences, with_tokens=True)
        results, first = [], 0
        for request, options in zip(requests, checked):
            last = first + len(request[1])
            span = slice(int(cu_seqlens[first]), int(cu_seqlens[last]))
            cu = cu_seqlens[first:last + 1] - cu_seqlens[first]
            entry = entries[request[0]]
            results.append(entry.compute(self, packed[span], cu, options,
                                         *((tokens[span],) if entry.token_ids else ())))
            first = last
        return results

    # -- the heads --------------------------------------------------------------------------

    def _tokenised(self, texts, truncation: str, side: str | None = None):
        items = [texts] if isinstance(texts, (str, tuple)) else list(texts)
        return items, self.tokenizer.encode_all(items, truncation, 0, side)

    @property
    def labels(self) -> list | None:
        """The sequence classifier's labels, or None without one."""
        return None if self.classifier is None else list(self.classifier.labels)

    def need_classifier(self, one_label: bool = False):
        """The sequence classifier (with one output, for rerank); ValueError without one."""
        if self.classifier is None:
            raise ValueError("this model has no sequence classifier (load a "
                             "*ForSequenceClassification or CrossEncoder checkpoint)")
        if one_label and len(self.classifier.labels) != 1:
            raise ValueError(f"rerank needs a classifier with one output (a relevance score); "
                             f"this one has {len(self.classifier.labels)} labels: use classify")
        return self.classifier

    def classify_encodings(self, packed: torch.Tensor, cu_seqlens: torch.Tensor,
                           raw_scores: bool = True) -> torch.Tensor:
        """(B, labels) float32 on the CPU: the classifier's logits on each sequence's first
        token (or the mean of its tokens, as the classifier pools), from packed encodings;
        through its score activation unless ``raw_scores``."""
        classifier = self.need_classifier()
        logits = finite(classifier.head(pooled(packed, cu_seqlens, classifier.pooling)).cpu(),
                        "the classifier's logits")
        return logits if raw_scores else score(logits, classifier.score_activation)

    def classify(self, texts, raw_scores: bool = False, truncation: str = "warn",
                 batch_tokens: int = BATCH_TOKENS,
                 truncation_side: str | None = None) -> np.ndarray:
        """Scores of the sequence classifier for each text or (text_a, text_b) pair: (N, labels)
        float32, through the checkpoint's activation (a CrossEncoder's, else sigmoid for one
        label or multi-label, softmax otherwise), or the logits with ``raw_scores``."""
        classifier = self.need_classifier()
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
        """The ``documents`` ordered by their relevance to ``query``, best first:
        [{"index": i, "score": s}, ...], the first ``top_k`` (default: all). The relevance is
        the cross-encoder's score, or for a model with a multi-vector head and no classifier
        (BGE-M3) the late-interaction MaxSim of their multi-vector embeddings (``raw_scores``
        has no meaning there)."""
        if not self.reranks_by_maxsim:
            self.need_classifier(one_label=True)
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
        if self.reranks_by_maxsim:
            vectors = self.encode_multi([query] + documents, truncation, batch_tokens,
                                        truncation_side=truncation_side)
            scores = maxsim(torch.from_numpy(vectors[0]),
                            [torch.from_numpy(v) for v in vectors[1:]]).numpy()
        else:
            scores = self.classify([(query, d) for d in documents], raw_scores, truncation,
                                   batch_tokens, truncation_side)[:, 0]
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [{"index": int(i), "score": float(scores[i])} for i in order]

    def need_mlm(self) -> None:
        if not self.engine.has_mlm:
            raise ValueError("this model has no MLM head, so it gives no sparse vectors")

    def need_nsp(self) -> None:
        if not self.engine.has_nsp:
            raise ValueError("this model has no NSP head")

    def sparse_tokenized(self, encoded: list) -> list[SparseVector]:
        """SPLADE vectors of texts already tokenised: the MLM logits of every token, through
        the model's sparse activation and pooling, run packed in batches whose logits stay
        under SPARSE_LOGITS_BYTES."""
        self.need_mlm()
        return sparse_vectors(self.engine, self.sparse, encoded, self.logit_rows_budget())

    def encode_sparse(self, texts, truncation: str = "warn", batch_tokens: int = BATCH_TOKENS, *,
                      prompt_name: str | None = None, prompt: str | None = None,
                      truncation_side: str | None = None):
        """The sparse lexical vector of each text (SPLADE's, or BGE-M3's lexical weights): a
        :class:`SparseVector` (the non-zero vocabulary ids and their weights), or a list of
        them."""
        return self._each_text(texts, model_task(self, "sparse"), truncation, batch_tokens,
                               prompt_name, prompt, truncation_side)

    def encode_multi(self, texts, truncation: str = "warn", batch_tokens: int = BATCH_TOKENS,
                     *, prompt_name: str | None = None, prompt: str | None = None,
                     truncation_side: str | None = None):
        """The multi-vector (ColBERT) embeddings of each text: a (tokens - 1, D) float32 array
        of unit rows, one per token but the first, or a list of them (BGE-M3's)."""
        return self._each_text(texts, "embed_multi", truncation, batch_tokens, prompt_name,
                               prompt, truncation_side, lambda row: row.numpy())

    def _each_text(self, texts, task: str, truncation, batch_tokens, prompt_name, prompt,
                   truncation_side, convert=lambda row: row):
        """``task``'s result for a text (a str), or for each of a list, through iter_task in
        one chunk."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        out = [convert(row) for chunk in self.iter_task(
            items, task, batch_tokens=batch_tokens, chunk_size=max(1, len(items)),
            truncation=truncation, prompt_name=prompt_name, prompt=prompt,
            truncation_side=truncation_side) for row in chunk]
        return out[0] if single else out

    def fill_mask(self, texts, k: int = 5, truncation: str = "warn",
                  batch_tokens: int = BATCH_TOKENS):
        """Top-``k`` words for each mask token in each text (or (text_a, text_b) pair): a list
        per text of a list per mask of (word, probability)."""
        self.check_fill_mask(k)
        _, encoded = self._tokenised(texts, truncation)
        results = self.fill_mask_tokenized(encoded, k, batch_tokens)
        return results[0] if isinstance(texts, (str, tuple)) else results

    def check_fill_mask(self, k: int) -> None:
        """ValueError unless this model fills masks and ``k`` is a count of words it has."""
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
        """fill_mask's answer for texts already tokenised, run packed; the vocabulary logits
        of at most SPARSE_LOGITS_BYTES are held at once."""
        self.check_fill_mask(k)
        return top_words(self.engine, self.tokenizer, encoded, self.mask_positions(encoded), k,
                         batch_tokens, self.logit_rows_budget())

    def next_sentence(self, pairs, truncation: str = "warn",
                      batch_tokens: int = BATCH_TOKENS) -> np.ndarray:
        """P(text_b follows text_a) for each (text_a, text_b) pair, from the NSP head."""
        items = [pairs] if isinstance(pairs, tuple) else list(pairs)
        if not all(isinstance(i, tuple) or (isinstance(i, list) and len(i) == 2)
                   for i in items):
            raise TypeError("next_sentence takes (text_a, text_b) pairs")
        self.need_nsp()
        _, encoded = self._tokenised(items, truncation)
        result = self.next_sentence_tokenized(encoded, batch_tokens)
        return result[0] if isinstance(pairs, tuple) else result

    def next_sentence_tokenized(self, encoded: list,
                                batch_tokens: int = BATCH_TOKENS) -> np.ndarray:
        """next_sentence's answer for pairs already tokenised, run packed."""
        self.need_nsp()
        return next_sentence_probs(self.engine, encoded, self.nsp_is_next_label, batch_tokens)


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


def load_text_model(model, device="auto", dtype=None, quantize: str | None = None,
                    revision: str | None = None) -> TextModel:
    """The TextModel of ``model`` (a path or hub id) on ``device`` ("auto": a GPU where there
    is one) in ``dtype`` (None: the device's default; "auto": bfloat16 on a CPU where it
    measures faster), as the command line and Ray's actors and replicas load it."""
    device = resolve_device(device)
    return TextModel.load(model, device=device, dtype=default_dtype(device, dtype),
                          quantize=quantize, revision=revision)
