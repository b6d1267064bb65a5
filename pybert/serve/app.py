"""``pybert serve``: embeddings over HTTP, with dynamic batching.

One process serves one :class:`~pybert.text.TextModel` on a Starlette app under uvicorn:

- Hugging Face text-embeddings-inference's ``POST /embed`` and OpenAI's
  ``POST /v1/embeddings``; ``POST /fill-mask`` and ``POST /next-sentence`` for models with the
  MLM and NSP heads; ``GET /health``, ``GET /info`` and ``GET /metrics`` (Prometheus).
- Requests are tokenised off the event loop, then queued; one batcher thread (per device,
  with ``--devices``: a request goes to the least loaded) packs the
  sequences of as many queued requests as fit a token budget (waiting at most
  ``max_wait_ms`` for more once it has some) into one engine call and hands each request its
  rows. A full queue answers 503 with Retry-After instead of growing without bound; a client
  that disconnects takes its queued work with it.
- Every bad request gets a 4xx with a JSON error that says what is wrong. With an API key, every
  route but ``/health`` wants it as a bearer token. SIGTERM stops accepting connections,
  finishes the requests in flight, then exits.
"""

from __future__ import annotations

import contextlib
import logging
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .batcher import Batcher, BatcherPool
from .config import ServeConfig
from .http import ClientGone, HTTPError, check_api_key, error_body
from .metrics import Metrics
from .routes import Routes

__all__ = ["create_app", "serve"]

logger = logging.getLogger("pybert.serve")


def _endpoint(path: str, handler, config: ServeConfig, metrics: Metrics):
    """``handler`` behind what every route shares: the API key (all but /health), errors as
    JSON, and the request's count and latency in the metrics."""
    async def endpoint(request: Request):
        start = time.perf_counter()
        try:
            if path != "/health":
                check_api_key(request, config.api_key)
            response = await handler(request)
        except HTTPError as err:
            response = JSONResponse(error_body(err, openai=path.startswith("/v1/")),
                                    status_code=err.status, headers=err.headers)
        except ClientGone:
            response = Response(status_code=499)
        except Exception as err:  # noqa: BLE001 (a bug or a failed forward: still JSON, counted)
            logger.exception("%s failed", path)
            response = JSONResponse(error_body(HTTPError(500, f"internal error: "
                                                              f"{type(err).__name__}",
                                                         "Backend"), path.startswith("/v1/")),
                                    status_code=500)
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response
    return endpoint


def create_app(model, config: ServeConfig | None = None, replicas=()) -> Starlette:
    """The Starlette app serving ``model`` (a TextModel); ``app.state.batcher`` is its batcher.
    ``replicas``: more TextModels of the same checkpoint on other devices, each with its own
    batcher (a BatcherPool spreads the requests by queue depth)."""
    config = config or ServeConfig()
    batchers = [Batcher(m, config) for m in (model, *replicas)]
    batcher = batchers[0] if len(batchers) == 1 else BatcherPool(batchers)
    metrics = Metrics(lambda: batcher.queued_sequences)
    batcher.observe_batch = metrics.observe_batch
    routes = Routes(model, config, batcher, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        await routes.warm_up()
        try:
            yield
        finally:
            routes.ready = False
            await run_in_threadpool(batcher.stop)
            routes.tokenizing.shutdown(wait=False)

    table = [Route(path, _endpoint(path, handler, config, metrics), methods=methods)
             for path, handler, methods in routes.table()]
    app = Starlette(routes=table, lifespan=lifespan)
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


def _raise_open_file_limit(wanted: int) -> None:
    """The soft limit on open files raised toward the hard one, so that ``wanted`` connections
    (--max-connections, each a socket) fit beside the process's own files; a default soft
    limit of 1,024 would turn new clients away long before the server's own limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + 256 if hard == resource.RLIM_INFINITY else min(hard, wanted + 256)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def serve(model, host: str = "127.0.0.1", port: int = 8080, config: ServeConfig | None = None,
          log_level: str = "info", replicas=()) -> None:
    """Run the server until SIGTERM or Ctrl-C; requests in flight are finished first.
    ``replicas``: the same model on more devices (see create_app)."""
    import uvicorn

    config = config or ServeConfig()
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in [0, 65535], got {port}")
    _return_large_buffers_to_the_os()
    _raise_open_file_limit(config.max_connections)
    # uvicorn closes idle kept-alive connections after idle_timeout_s and answers 503 beyond
    # max_connections; a request's body must keep arriving (body_timeout_s, read_json).
    uvicorn.run(create_app(model, config, replicas), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=60, access_log=False,
                timeout_keep_alive=config.idle_timeout_s,
                limit_concurrency=config.max_connections)
