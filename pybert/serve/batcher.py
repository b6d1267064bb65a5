"""The batching queue in front of the engine: no HTTP in it (the shape of
text-embeddings-inference's ``core/src/queue.rs``). Requests already tokenised come in from
any event loop; one thread packs the sequences of as many as fit a token budget into one
engine call and settles each request's future with its rows."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..tasks import TASKS
from ..tasks import task as task_of
from .config import ServeConfig

__all__ = ["Batcher", "BatcherPool", "QueueFull", "RequestTooLarge", "joined"]


class QueueFull(Exception):
    """The batcher holds as many sequences as it may."""


def _forward_of(task: str) -> str:
    """Which requests may share an engine call (pybert.tasks: the encoder's tasks together, the
    others each with their own kind)."""
    forward = TASKS[task].forward
    return "encoder" if forward == "encoder" else task


class RequestTooLarge(Exception):
    """A request holds more sequences than the whole queue may."""


@dataclass
class _Job:
    encoded: list            # (ids, segments) per text
    tokens: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    task: str = "embed"
    options: dict | None = None  # the task's ({"k": ...} for fill_mask)


def _settle(future: asyncio.Future, value=None, error: BaseException | None = None) -> None:
    if future.done():  # cancelled: the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class Batcher:
    """The one thread that runs the engine for the server's embedding requests.

    It takes queued requests in arrival order and packs the sequences of as many as fit
    ``batch_tokens`` and share a forward (embedding, token and classification requests do;
    sparse ones share theirs) into one engine call (``TextModel.run_tasks``), waiting at most
    ``max_wait_ms`` for more work once it has some; each request's future gets its result:
    vectors pooled by the model's pooling and not normalised (each request chooses), per-token
    vectors, classifier logits or sparse vectors."""

    def __init__(self, model, config: ServeConfig, observe_batch=None):
        self.model, self.config = model, config
        self.observe_batch = observe_batch or (lambda sequences, tokens: None)
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.queued_sequences = 0
        # Tokens queued and in the engine call now: the work ahead of a new request.
        self.queued_tokens = self.running_tokens = 0
        self._thread = threading.Thread(target=self._run, name="pybert-batcher", daemon=True)

    replicas = 1  # engines behind this batcher (a BatcherPool has several)

    @property
    def devices(self) -> list[str]:
        return [str(self.model.engine.device)] if hasattr(self.model, "engine") else []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    def submit(self, encoded: list, loop: asyncio.AbstractEventLoop, task: str = "embed",
               options: dict | None = None) -> asyncio.Future:
        """A future of the result of ``task`` (one of pybert.tasks.TASKS, with its
        ``options``) on ``encoded``; QueueFull if there is no room now, RequestTooLarge if there
        never is."""
        task_of(task)
        if len(encoded) > self.config.max_queue:
            raise RequestTooLarge(f"a request may hold at most max_queue="
                                  f"{self.config.max_queue} texts, this one has {len(encoded)}")
        future = loop.create_future()
        job = _Job(encoded, sum(len(ids) for ids, _ in encoded), future, loop, task, options)
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if self.queued_sequences + len(encoded) > self.config.max_queue:
                raise QueueFull(f"the queue holds {self.queued_sequences} sequences already")
            self._queue.append(job)
            self.queued_sequences += len(encoded)
            self.queued_tokens += job.tokens
            self._cond.notify()
        return future

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            jobs = [self._queue.popleft()]
            total, forward = jobs[0].tokens, _forward_of(jobs[0].task)
            deadline = time.monotonic() + self.config.max_wait_ms / 1000
            while total < self.config.batch_tokens:
                if self._queue:
                    if total + self._queue[0].tokens > self.config.batch_tokens or \
                            _forward_of(self._queue[0].task) != forward:
                        break
                    jobs.append(self._queue.popleft())
                    total += jobs[-1].tokens
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            self.queued_sequences -= sum(len(job.encoded) for job in jobs)
            self.queued_tokens -= total
            self.running_tokens = total
            return jobs

    @property
    def work_in_flight(self) -> int:
        """Tokens queued plus those of the engine call running now."""
        return self.queued_tokens + self.running_tokens

    def _run(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            jobs = [job for job in jobs if not job.future.cancelled()]  # clients that left
            if not jobs:
                continue
            self.observe_batch(sum(len(job.encoded) for job in jobs),
                               sum(job.tokens for job in jobs))
            try:
                self._run_jobs(jobs)
            finally:
                self.running_tokens = 0

    def _run_jobs(self, jobs: list[_Job]) -> None:
        """One engine call for ``jobs``; if it fails, each job alone, so that a request whose
        input breaks the forward (a non-finite output, say) fails by itself and the others
        batched with it still get their answers. A request of more than batch_tokens runs as
        several engine calls of at most that (one sequence each at least), its parts joined."""
        try:
            if len(jobs) == 1 and jobs[0].tokens > self.config.batch_tokens:
                results = [self._run_split(jobs[0])]
            else:
                results = self.model.run_tasks([(job.task, job.encoded, job.options or {})
                                                for job in jobs])
        except Exception as err:  # noqa: BLE001 (handed to the request that caused it)
            if len(jobs) > 1:
                for job in jobs:
                    self._run_jobs([job])
                return
            results, error = [None], err
        else:
            error = None
        for job, result in zip(jobs, results):
            job.loop.call_soon_threadsafe(_settle, job.future, result, error)


    def _run_split(self, job: _Job):
        """The result of one request too large for one engine call, a slice of sequences of at
        most batch_tokens tokens at a time, in order."""
        parts, start = [], 0
        while start < len(job.encoded):
            end, tokens = start, 0
            while end < len(job.encoded) and (end == start or tokens + len(
                    job.encoded[end][0]) <= self.config.batch_tokens):
                tokens += len(job.encoded[end][0])
                end += 1
            parts.append(self.model.run_tasks([(job.task, job.encoded[start:end],
                                                job.options or {})])[0])
            start = end
        return joined(parts)


def joined(parts: list):
    """One result of a request's parts: tensors and arrays concatenated, lists chained."""
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [item for part in parts for item in part]


class BatcherPool:
    """One batcher per engine, each on its own device (``pybert serve --devices
    cuda:0,cuda:1``), behind Batcher's interface: a request goes to the batcher with the least
    work in flight (tokens queued and in its running engine call: a batcher inside a long call
    has none queued, yet is busy), ties taken in turn, so that devices that are all idle or
    all equally busy share the requests; each batcher then packs its own queue into its
    engine's calls."""

    def __init__(self, batchers: list[Batcher]):
        if not batchers:
            raise ValueError("a BatcherPool needs at least one batcher")
        self.batchers = list(batchers)
        self._turn = 0
        self._lock = threading.Lock()

    @property
    def replicas(self) -> int:
        return len(self.batchers)

    @property
    def devices(self) -> list[str]:
        return [device for batcher in self.batchers for device in batcher.devices]

    @property
    def queued_sequences(self) -> int:
        return sum(batcher.queued_sequences for batcher in self.batchers)

    @property
    def observe_batch(self):
        return self.batchers[0].observe_batch

    @observe_batch.setter
    def observe_batch(self, fn) -> None:
        for batcher in self.batchers:
            batcher.observe_batch = fn

    def start(self) -> None:
        for batcher in self.batchers:
            batcher.start()

    def stop(self) -> None:
        for batcher in self.batchers:
            batcher.stop()

    def submit(self, encoded: list, loop: asyncio.AbstractEventLoop, task: str = "embed",
               options: dict | None = None) -> asyncio.Future:
        """Batcher.submit on the batcher with the least work in flight (then the most room in
        its queue)."""
        with self._lock:
            turn = self._turn
            self._turn = (turn + 1) % len(self.batchers)
        order = self.batchers[turn:] + self.batchers[:turn]
        chosen = min(order, key=lambda batcher: (batcher.work_in_flight,
                                                 batcher.queued_sequences))
        return chosen.submit(encoded, loop, task, options)
