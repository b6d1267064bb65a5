"""The tasks a text model runs on a batch of tokenised texts, as data: one registry read by the
text model (``iter_task``, ``run_tasks``, ``tasks``), the server's batcher and routes, the batch
job, Ray and the command line. A new task is an entry here (its name, which forward it needs,
what it computes from that forward's packed output, which models have it); see the recipe in
docs/architecture.md.

``forward`` says which tasks share an engine call: the "encoder" tasks are computed from one
packed forward's encodings (pooled vectors, per-token vectors, classifier logits), so requests
of different ones are batched together; a task with a head of its own ("mlm" logits, the
"nsp" head) runs its own packed engine calls, with requests of its own kind only.

A task's ``compute`` takes the text model (duck-typed: this module imports none of the layers
above it) and, for an encoder task, ``(model, packed encodings (T, H), cu_seqlens, options)``
(with ``token_ids``, the packed token ids (T,) after them: the tasks that read which token
each row is, as BGE-M3's lexical weights);
for a head task, ``(model, sequences, options)`` (a list of (ids, segments)). It returns one
result per sequence: a tensor of N rows, or a list of N. ``options`` is the task's keyword
dict, checked once by ``check`` before any work; requests run together in one head call have
their options merged by ``merge`` and their own part cut by ``trim``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Task", "TASKS", "JOB_TASKS", "task", "register", "model_task"]


def _no_options(model, options: dict) -> dict:
    if options:
        raise ValueError(f"this task takes no options, got {sorted(options)}")
    return {}


def _needing(need: str):
    """A check that calls the model's ``need`` (which raises saying what it lacks), then takes
    no options."""
    def check(model, options: dict) -> dict:
        getattr(model, need)()
        return _no_options(model, options)
    return check


def _same(options: list[dict]) -> dict:
    return options[0] if options else {}


def _whole(result, options: dict):
    return result


@dataclass(frozen=True)
class Task:
    name: str        # as the API, run_tasks, the batcher, the job, Ray and /info name it
    forward: str     # "encoder" (one shared packed forward), "mlm" or "nsp" (calls of its own)
    output: str      # what one text gives
    job: bool        # whether a batch job (pybert encode --task, Ray) writes it
    compute: Callable            # see the module's docstring
    available: Callable          # model -> whether it serves this task
    needs: str = ""              # what a model needs to serve it, for the error saying so
    width: Callable = lambda model, options: None  # values per row of a job's output, if fixed
    # A job's fixed-width output: (its .npy / .safetensors tensor's name, its .parquet column's)
    names: tuple = ()
    check: Callable = _no_options  # (model, options) -> the options checked and completed
    merge: Callable = _same      # options of the requests one head call runs -> its options
    trim: Callable = _whole      # (a request's part of a merged result, its options) -> its own
    token_ids: bool = False      # an encoder task's compute also takes the packed token ids


def _embed_options(model, options: dict) -> dict:
    unknown = set(options) - {"pooling", "normalize", "dimensions"}
    if unknown:
        raise ValueError(f"embed takes pooling, normalize and dimensions, got {sorted(unknown)}")
    pooling = model.pooling_of(options.get("pooling"))
    if pooling not in ("cls", "mean"):  # "tokens" is embed_all's
        raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
    normalize = options.get("normalize")
    return {"pooling": pooling, "normalize": model.normalize if normalize is None else
            bool(normalize), "dimensions": model.check_dimensions(options.get("dimensions"))}


def _classify_options(model, options: dict) -> dict:
    unknown = set(options) - {"raw_scores"}
    if unknown:
        raise ValueError(f"classify takes raw_scores, got {sorted(unknown)}")
    model.need_classifier()
    return {"raw_scores": bool(options.get("raw_scores", False))}


def _fill_mask_options(model, options: dict) -> dict:
    unknown = set(options) - {"k"}
    if unknown:
        raise ValueError(f"fill_mask takes k, got {sorted(unknown)}")
    k = options.get("k", 5)
    model.check_fill_mask(k)
    return {"k": k}


TASKS: dict[str, Task] = {}


def register(entry: Task) -> Task:
    """Add ``entry`` to the registry (a new task is one call of this, here)."""
    if entry.forward not in ("encoder", "mlm", "nsp"):
        raise ValueError(f"a task's forward is 'encoder', 'mlm' or 'nsp', got {entry.forward!r}")
    if entry.name in TASKS:
        raise ValueError(f"task {entry.name!r} is registered already")
    TASKS[entry.name] = entry
    return entry


register(Task(
    "embed", "encoder", "a pooled vector (D,)", job=True,
    compute=lambda model, packed, cu, o: model.pool_encodings(
        packed, cu, o["pooling"], o["normalize"], o["dimensions"]),
    available=lambda model: True, check=_embed_options,
    width=lambda model, o: o["dimensions"] or model.dim, names=("embeddings", "embedding")))
register(Task(
    "embed_all", "encoder", "its tokens' vectors (len, H)", job=False,
    compute=lambda model, packed, cu, o: model.token_encodings(packed, cu),
    available=lambda model: True))
register(Task(
    "classify", "encoder", "the classifier's scores (labels,), or logits with raw_scores",
    job=True, compute=lambda model, packed, cu, o: model.classify_encodings(
        packed, cu, o["raw_scores"]),
    available=lambda model: model.classifier is not None, check=_classify_options,
    needs="a sequence classifier (a *ForSequenceClassification or CrossEncoder checkpoint)",
    width=lambda model, o: len(model.labels), names=("scores", "scores")))
register(Task(
    "sparse", "mlm", "a SparseVector of SPLADE weights", job=True,
    compute=lambda model, sequences, o: model.sparse_tokenized(sequences),
    available=lambda model: model.engine.has_mlm,
    check=_needing("need_mlm"),
    needs="an MLM head (a SPLADE / SparseEncoder or *ForMaskedLM checkpoint)"))
register(Task(
    "lexical", "encoder", "a SparseVector of BGE-M3's lexical weights", job=False,
    compute=lambda model, packed, cu, o, tokens: model.lexical_encodings(packed, cu, tokens),
    available=lambda model: model.lexical is not None, token_ids=True,
    needs="a lexical head (BGE-M3's sparse_linear.pt)"))
register(Task(
    "embed_multi", "encoder", "its tokens' multi-vector embeddings (len - 1, D)", job=False,
    compute=lambda model, packed, cu, o: model.multi_vector_encodings(packed, cu),
    available=lambda model: model.multi_vector is not None,
    needs="a multi-vector head (BGE-M3's colbert_linear.pt)"))
register(Task(
    "fill_mask", "mlm", "the top-k words at each mask", job=False,
    compute=lambda model, sequences, o: model.fill_mask_tokenized(sequences, o["k"]),
    available=lambda model: model.engine.has_mlm and model.tokenizer.mask_id is not None,
    needs="an MLM head and a tokenizer with a mask token",
    check=_fill_mask_options,
    merge=lambda options: {"k": max(o["k"] for o in options)},
    trim=lambda part, o: [[guesses[:o["k"]] for guesses in text] for text in part]))
register(Task(
    "next_sentence", "nsp", "P(b follows a)", job=False,
    compute=lambda model, sequences, o: model.next_sentence_tokenized(sequences),
    available=lambda model: model.engine.has_nsp, needs="an NSP head",
    check=_needing("need_nsp")))

# What a batch job writes (pybert encode --task, the Ray job).
JOB_TASKS = tuple(name for name, t in TASKS.items() if t.job)


def task(name: str, among=None) -> Task:
    """The task named ``name`` (one of ``among`` names, default every task); ValueError
    naming the choices otherwise."""
    choices = tuple(TASKS) if among is None else tuple(among)
    if name not in choices:
        raise ValueError(f"task must be one of {choices}, got {name!r}")
    return TASKS[name]


def model_task(model, name: str) -> str:
    """The task ``model`` runs when asked for ``name``: "sparse" means the model's own sparse
    vectors (BGE-M3's lexical weights where it has that head, SPLADE's otherwise); any other
    name is itself."""
    return model.sparse_task if name == "sparse" else name
