"""The tasks a text model runs on a batch of tokenised texts, as data: one registry read by the
text model (``run_tasks``), the server's batcher, the batch job, Ray and the command line. A
new task is an entry here and its computation in TextModel (docs/architecture.md).

``forward`` says which tasks share an engine call: the "encoder" tasks are computed from one
packed forward's encodings (pooled vectors, per-token vectors, classifier logits), so requests
of different ones are batched together; a task with a head of its own ("mlm" logits, the
"nsp" head) runs with requests of its own kind only."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Task", "TASKS", "JOB_TASKS", "task"]


@dataclass(frozen=True)
class Task:
    name: str       # as run_tasks, the batcher, the job and Ray name it
    forward: str    # "encoder" (one shared packed forward), "mlm" or "nsp" (a call of its own)
    output: str     # what one text gives
    job: bool       # whether a batch job (pybert encode --task, Ray) writes it


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("embed", "encoder", "a pooled vector (D,)", job=True),
    Task("embed_all", "encoder", "its tokens' vectors (len, H)", job=False),
    Task("classify", "encoder", "the classifier's logits (labels,)", job=True),
    Task("sparse", "mlm", "a SparseVector of SPLADE weights", job=True),
    Task("fill_mask", "mlm", "the top-k words at each mask", job=False),
    Task("next_sentence", "nsp", "P(b follows a)", job=False),
)}
# What a batch job writes (pybert encode --task, the Ray job).
JOB_TASKS = tuple(name for name, t in TASKS.items() if t.job)


def task(name: str, among=None) -> Task:
    """The task named ``name`` (one of ``among`` names, default every task); ValueError
    naming the choices otherwise."""
    choices = tuple(TASKS) if among is None else tuple(among)
    if name not in choices:
        raise ValueError(f"task must be one of {choices}, got {name!r}")
    return TASKS[name]
