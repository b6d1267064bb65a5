"""``pybert serve``: embeddings over HTTP, with dynamic batching.

One process serves one :class:`~pybert.text.TextModel` on a Starlette app under uvicorn:

- Hugging Face text-embeddings-inference's ``POST /embed`` and OpenAI's
  ``POST /v1/embeddings``; ``POST /fill-mask`` and ``POST /next-sentence`` for models with the
  MLM and NSP heads; ``GET /health``, ``GET /info`` and ``GET /metrics`` (Prometheus).
- Requests are tokenised off the event loop, then queued; one batcher thread packs the
  sequences of as many queued requests as fit a token budget (waiting at most
  ``max_wait_ms`` for more once it has some) into one engine call and hands each request its
  rows. A full queue answers 503 with Retry-After instead of growing without bound; a client
  that disconnects takes its queued work with it.
- Every bad request gets a 4xx with a JSON error that says what is wrong. With an API key, every
  route but ``/health`` wants it as a bearer token. SIGTERM stops accepting connections,
  finishes the requests in flight, then exits.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hmac
import json
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ServeConfig", "Batcher", "create_app", "serve"]


@dataclass(frozen=True)
class ServeConfig:
    batch_tokens: int = 16384     # tokens of one packed engine call (a longer request runs alone)
    max_wait_ms: float = 2.0      # how long the batcher waits for more work once it has some
    max_queue: int = 4096         # sequences waiting at most; beyond it, 503 + Retry-After
    max_inputs: int = 256         # texts per request
    max_text_bytes: int = 65536   # UTF-8 bytes per text
    max_body_bytes: int = 8 << 20
    api_key: str | None = None
    model_id: str = "pybert"

    def __post_init__(self):
        from .config import check_positive_int

        for name in ("batch_tokens", "max_queue", "max_inputs", "max_text_bytes",
                     "max_body_bytes"):
            check_positive_int(getattr(self, name), name)
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ValueError(f"max_wait_ms must be in [0, 10000], got {self.max_wait_ms!r}")


class QueueFull(Exception):
    """The batcher holds as many sequences as it may."""


@dataclass
class _Job:
    encoded: list            # (ids, segments) per text
    tokens: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


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
    ``batch_tokens`` into one engine call (``TextModel.encode_tokenized``), waiting at most
    ``max_wait_ms`` for more work once it has some; each request's future gets its rows,
    pooled by the model's pooling and not normalised (each request chooses)."""

    def __init__(self, model, config: ServeConfig, observe_batch=None):
        self.model, self.config = model, config
        self.observe_batch = observe_batch or (lambda sequences, tokens: None)
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.queued_sequences = 0
        self._thread = threading.Thread(target=self._run, name="pybert-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    def submit(self, encoded: list, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        """A future of the (len(encoded), H) vectors; QueueFull if there is no room."""
        future = loop.create_future()
        job = _Job(encoded, sum(len(ids) for ids, _ in encoded), future, loop)
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if self.queued_sequences + len(encoded) > self.config.max_queue:
                raise QueueFull(f"the queue holds {self.queued_sequences} sequences already")
            self._queue.append(job)
            self.queued_sequences += len(encoded)
            self._cond.notify()
        return future

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            jobs = [self._queue.popleft()]
            total = jobs[0].tokens
            deadline = time.monotonic() + self.config.max_wait_ms / 1000
            while total < self.config.batch_tokens:
                if self._queue:
                    if total + self._queue[0].tokens > self.config.batch_tokens:
                        break
                    jobs.append(self._queue.popleft())
                    total += jobs[-1].tokens
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            self.queued_sequences -= sum(len(job.encoded) for job in jobs)
            return jobs

    def _run(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            jobs = [job for job in jobs if not job.future.cancelled()]  # clients that left
            if not jobs:
                continue
            sequences = [item for job in jobs for item in job.encoded]
            self.observe_batch(len(sequences), sum(job.tokens for job in jobs))
            try:
                vectors = self.model.encode_tokenized(sequences, normalize=False)
            except Exception as err:  # noqa: BLE001 (handed to each request)
                for job in jobs:
                    job.loop.call_soon_threadsafe(_settle, job.future, None, err)
                continue
            start = 0
            for job in jobs:
                rows = vectors[start:start + len(job.encoded)]
                start += len(job.encoded)
                job.loop.call_soon_threadsafe(_settle, job.future, rows)


# -- HTTP ---------------------------------------------------------------------------------------

class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "Validation",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


class ClientGone(Exception):
    pass


class _Metrics:
    """The server's Prometheus metrics, in a registry of their own."""

    def __init__(self, batcher_depth):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("pybert_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("pybert_request_seconds", "request latency by route",
                                 ["route"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1,
                                          2.5, 5, 10, 30))
        self.batch_sequences = Histogram("pybert_batch_sequences", "sequences per engine call",
                                         registry=self.registry,
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.batch_tokens = Histogram("pybert_batch_tokens", "tokens per engine call",
                                      registry=self.registry,
                                      buckets=(16, 64, 256, 1024, 4096, 16384, 65536))
        depth = Gauge("pybert_queue_sequences", "sequences waiting for the batcher",
                      registry=self.registry)
        depth.set_function(batcher_depth)

    def observe_batch(self, sequences: int, tokens: int) -> None:
        self.batch_sequences.observe(sequences)
        self.batch_tokens.observe(tokens)


def _texts(value, name: str, config: ServeConfig, pairs: bool = False) -> list:
    """A request's texts (a str or a non-empty list), each checked; pairs as tuples."""
    single = isinstance(value, str) or (pairs and _is_pair(value))
    items = [value] if single else value
    if not isinstance(items, list):
        raise HTTPError(422, f"{name} must be a string or a list of strings"
                        + (" or [text_a, text_b] pairs" if pairs else ""))
    if not items:
        raise HTTPError(422, f"{name} must not be empty")
    if len(items) > config.max_inputs:
        raise HTTPError(413, f"{name} has {len(items)} texts, more than the "
                        f"{config.max_inputs} a request may have", "Validation")
    out = []
    for i, item in enumerate(items):
        if pairs:
            if not _is_pair(item):
                raise HTTPError(422, f"{name}[{i}] must be a [text_a, text_b] pair of strings")
            texts = tuple(item)
        elif isinstance(item, str):
            texts = (item,)
        else:
            raise HTTPError(422, f"{name}[{i}] must be a string, got {type(item).__name__}")
        for text in texts:
            if len(text.encode("utf-8", errors="surrogatepass")) > config.max_text_bytes:
                raise HTTPError(413, f"{name}[{i}] is longer than {config.max_text_bytes} "
                                "bytes")
        out.append(texts if pairs else texts[0])
    return out


def _is_pair(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def _flag(body: dict, name: str, default):
    value = body.get(name, default)
    if value is not default and not isinstance(value, bool):
        raise HTTPError(422, f"{name} must be true or false")
    return value


def create_app(model, config: ServeConfig | None = None):
    """The Starlette app serving ``model`` (a TextModel)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    config = config or ServeConfig()
    state = {"ready": False}
    # Tokenising is CPU work under the GIL (or in the tokenizers package): a couple of threads
    # keep the event loop free; more would only add memory (an allocator arena each).
    from concurrent.futures import ThreadPoolExecutor

    tokenizing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pybert-tokenize")
    batcher = Batcher(model, config)
    metrics = _Metrics(lambda: batcher.queued_sequences)
    batcher.observe_batch = metrics.observe_batch
    engine = model.engine

    async def read_json(request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise HTTPError(413, f"the body is larger than {config.max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_body_bytes:
                raise HTTPError(413, f"the body is larger than {config.max_body_bytes} bytes")
        try:
            value = json.loads(bytes(body))
        except (ValueError, RecursionError) as err:
            raise HTTPError(400, f"the body is not valid JSON: {str(err)[:200]}") from None
        if not isinstance(value, dict):
            raise HTTPError(422, "the body must be a JSON object")
        return value

    async def tokenised(texts: list, truncate: bool) -> list:
        try:
            return await asyncio.get_running_loop().run_in_executor(
                tokenizing, model.tokenizer.encode_all, texts, "warn" if truncate else "error")
        except ValueError as err:
            raise HTTPError(413, f"{err}; pass \"truncate\": true to cut long inputs") from None

    async def embedded(request: Request, encoded: list) -> torch.Tensor:
        """The vectors of ``encoded`` from the batcher; the queued work is dropped if the
        client disconnects first."""
        try:
            future = batcher.submit(encoded, asyncio.get_running_loop())
        except QueueFull as err:
            raise HTTPError(503, f"overloaded ({err}); retry shortly", "Overloaded",
                            {"Retry-After": "1"}) from None

        async def disconnected():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watch = asyncio.ensure_future(disconnected())
        try:
            done, _ = await asyncio.wait({future, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if future not in done:
            future.cancel()
            raise ClientGone()
        return future.result()

    def normalised(vectors: torch.Tensor, normalize: bool | None) -> np.ndarray:
        if normalize if normalize is not None else model.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors.numpy()

    async def embed(request: Request):
        body = await read_json(request)
        texts = _texts(body.get("inputs"), "inputs", config)
        truncate = _flag(body, "truncate", False)
        normalize = _flag(body, "normalize", None)
        vectors = await embedded(request, await tokenised(texts, truncate))
        return JSONResponse(normalised(vectors, normalize).tolist())

    async def openai_embeddings(request: Request):
        body = await read_json(request)
        texts = _texts(body.get("input"), "input", config)
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise HTTPError(422, "encoding_format must be 'float' or 'base64'")
        encoded = await tokenised(texts, truncate=False)
        vectors = normalised(await embedded(request, encoded), None)
        data = [{"object": "embedding", "index": i,
                 "embedding": (base64.b64encode(v.astype("<f4").tobytes()).decode()
                               if encoding == "base64" else v.tolist())}
                for i, v in enumerate(vectors)]
        tokens = sum(len(ids) for ids, _ in encoded)
        return JSONResponse({"object": "list", "data": data,
                             "model": body.get("model") or config.model_id,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def fill_mask(request: Request):
        if not engine.has_mlm or model.tokenizer.mask_id is None:
            raise HTTPError(404, "this model has no MLM head", "NotFound")
        body = await read_json(request)
        texts = _texts(body.get("inputs"), "inputs", config)
        top_k = body.get("top_k", 5)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or \
                not 1 <= top_k <= min(100, engine.config.vocab_size):
            raise HTTPError(422, "top_k must be an int in [1, 100]")
        truncate = _flag(body, "truncate", False)
        try:
            results = await run_in_threadpool(model.fill_mask, texts, top_k,
                                               "warn" if truncate else "error")
        except ValueError as err:
            raise HTTPError(413, str(err)) from None
        return JSONResponse([[[{"token": w, "score": p} for w, p in mask] for mask in text]
                             for text in results])

    async def next_sentence(request: Request):
        if not engine.has_nsp:
            raise HTTPError(404, "this model has no NSP head", "NotFound")
        body = await read_json(request)
        pairs = _texts(body.get("inputs"), "inputs", config, pairs=True)
        truncate = _flag(body, "truncate", False)
        try:
            probs = await run_in_threadpool(model.next_sentence, pairs,
                                            "warn" if truncate else "error")
        except ValueError as err:
            raise HTTPError(413, str(err)) from None
        return JSONResponse(np.asarray(probs).tolist())

    async def health(request: Request):
        if not state["ready"]:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def info(request: Request):
        c = engine.config
        return JSONResponse({
            "model_id": config.model_id, "dim": c.num_hiddens, "max_input_length": c.max_len,
            "pooling": model.pooling, "normalize": model.normalize,
            "has_mlm": engine.has_mlm, "has_nsp": engine.has_nsp,
            "device": str(engine.device), "dtype": str(engine.dtype).replace("torch.", ""),
            "quantize": engine.quantize,
            "max_batch_tokens": config.batch_tokens, "max_client_batch_size": config.max_inputs,
            "max_text_bytes": config.max_text_bytes})

    async def prometheus(request: Request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def route(path, handler, methods):
        async def endpoint(request: Request):
            start = time.perf_counter()
            try:
                if config.api_key is not None and path != "/health":
                    given = request.headers.get("authorization", "")
                    if not hmac.compare_digest(given.encode(),
                                               f"Bearer {config.api_key}".encode()):
                        raise HTTPError(401, "a valid API key is required (Authorization: "
                                        "Bearer <key>)", "Unauthorized",
                                        {"WWW-Authenticate": "Bearer"})
                response = await handler(request)
            except HTTPError as err:
                error = {"error": err.message, "error_type": err.kind}
                if path.startswith("/v1/"):  # OpenAI's shape
                    error = {"error": {"message": err.message, "type": err.kind,
                                       "code": err.status}}
                response = JSONResponse(error, status_code=err.status, headers=err.headers)
            except ClientGone:
                response = Response(status_code=499)
            metrics.requests.labels(path, str(response.status_code)).inc()
            metrics.latency.labels(path).observe(time.perf_counter() - start)
            return response
        return Route(path, endpoint, methods=methods)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        warm = await tokenised(["warm up"], truncate=True)
        await embedded_without_request(warm)
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await run_in_threadpool(batcher.stop)
            tokenizing.shutdown(wait=False)

    async def embedded_without_request(encoded):
        return await batcher.submit(encoded, asyncio.get_running_loop())

    routes = [route("/embed", embed, ["POST"]),
              route("/v1/embeddings", openai_embeddings, ["POST"]),
              route("/fill-mask", fill_mask, ["POST"]),
              route("/next-sentence", next_sentence, ["POST"]),
              route("/health", health, ["GET"]),
              route("/info", info, ["GET"]),
              route("/metrics", prometheus, ["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.batcher = batcher
    return app


def _return_large_buffers_to_the_os() -> None:
    """glibc raises its mmap threshold each time a large buffer is freed, after which buffers of
    that size (a batch's activations) stay in the heap when freed: a long-running server's
    memory then grows with the largest batch it has seen. A fixed threshold keeps buffers
    above it mapped, so they go back to the OS when freed. (Other C libraries: no change.)"""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def serve(model, host: str = "127.0.0.1", port: int = 8080, config: ServeConfig | None = None,
          log_level: str = "info") -> None:
    """Run the server until SIGTERM or Ctrl-C; requests in flight are finished first."""
    import uvicorn

    _return_large_buffers_to_the_os()
    uvicorn.run(create_app(model, config), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=60, access_log=False)
