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
import json
import logging
import sys
import time

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..engine.cpu_plan import time_ratio
from ..engine.engine import AUTO_BFLOAT16_RATIO
from .batcher import Batcher, BatcherPool
from .config import ServeConfig
from .http import BodyBudget, ClientGone, HTTPError, check_api_key, error_body
from .metrics import Metrics
from .models import NamedModel, check_names, served_as
from .routes import Routes

__all__ = ["create_app", "serve"]

logger = logging.getLogger("pybert.serve")
access = logging.getLogger("pybert.access")


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
            response = JSONResponse(error_body(err, openai="/v1/" in path),
                                    status_code=err.status, headers=err.headers)
        except ClientGone:
            response = Response(status_code=499)
        except Exception as err:  # noqa: BLE001 (a bug or a failed forward: still JSON, counted)
            logger.exception("%s failed", path)
            response = JSONResponse(error_body(HTTPError(500, f"internal error: "
                                                              f"{type(err).__name__}",
                                                         "Backend"), "/v1/" in path),
                                    status_code=500)
        seconds = time.perf_counter() - start
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(seconds)
        if access.isEnabledFor(logging.INFO):
            client = request.client.host if request.client else "-"
            access.info('%s "%s %s" %d %.1f ms', client, request.method, path,
                        response.status_code, 1000 * seconds,
                        extra={"fields": {"client": client, "method": request.method,
                                          "path": path, "status": response.status_code,
                                          "latency_ms": round(1000 * seconds, 3)}})
        return response
    return endpoint


def create_app(model, config: ServeConfig | None = None, replicas=(),
               host: str = "127.0.0.1") -> Starlette:
    """The Starlette app serving ``model`` (a TextModel); ``app.state.batcher`` is its batcher.
    ``replicas``: more TextModels of the same checkpoint on other devices, each with its own
    batcher (a BatcherPool spreads the requests by queue depth). ``model`` may instead be a
    list of NamedModel: several models in one server, each with its own batchers and limits,
    the first the default (see _model_table). With ``grpc_port``, TEI's gRPC API is served
    too, on ``host``, over the same routes and batchers."""
    config = config or ServeConfig()
    served = model if isinstance(model, list) else \
        [NamedModel(config.model_id, model, config, tuple(replicas))]
    check_names([s.name for s in served])
    server = served[0].config  # the server-wide limits
    metrics = Metrics(lambda: sum(b.queued_sequences for b in batchers))
    bodies = BodyBudget(server.max_buffered_bytes)
    batchers, all_routes = [], []
    for s in served:
        pool = [Batcher(m, s.config) for m in (s.model, *s.replicas)]
        batcher = pool[0] if len(pool) == 1 else BatcherPool(pool)
        batcher.observe_batch = metrics.observe_batch
        batchers.append(batcher)
        all_routes.append(Routes(s.model, s.config, batcher, metrics, bodies))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for batcher in batchers:
            batcher.start()
        for routes in all_routes:
            await routes.warm_up()
        grpc_server = None
        if server.grpc_port:
            from .grpc_api import start_grpc

            grpc_server = await start_grpc(dict(zip((s.name for s in served), all_routes)),
                                           server.grpc_port, host)
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(30)
            for routes in all_routes:
                routes.ready = False
            for batcher in batchers:
                await run_in_threadpool(batcher.stop)
            for routes in all_routes:
                routes.tokenizing.shutdown(wait=False)

    table = all_routes[0].table() + [("/v1/models", _model_list([served[0].name]), ["GET"])] \
        if len(served) == 1 else _model_table([s.name for s in served], all_routes)
    app = Starlette(routes=[Route(path, _endpoint(path, handler, server, metrics),
                                  methods=methods) for path, handler, methods in table],
                    lifespan=lifespan)
    app.state.batcher = batchers[0]
    return app


def _model_list(names: list[str]):
    """OpenAI's GET /v1/models: the served models' names."""
    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "pybert"}
            for name in names]})
    return models


def _model_table(names: list[str], all_routes: list[Routes]) -> list:
    """The routes of a server of several models: each model's every route under
    /models/{name}/; the task routes (and /tokenize, /decode) also at their own paths, where
    the body's "model" field chooses the model (OpenAI's; default: the first); /info the first
    model's with the list of all, /health ready when all are, GET /v1/models the list."""
    by_name = dict(zip(names, all_routes))

    def chosen(body: dict, prefix: str | None) -> Routes:
        wanted = body.get("model")
        if wanted is None or (prefix is not None and wanted == prefix):
            return by_name[prefix or names[0]]
        routes = served_as(by_name, wanted)
        if prefix is not None:
            raise HTTPError(422, f"the body asks for model {wanted!r} on a route of {prefix!r}")
        return routes

    def dispatch(path: str, prefix: str | None):
        async def handle(request: Request):
            routes = by_name[prefix or names[0]]
            request.state.body = await routes.body(request)
            routes = chosen(request.state.body, prefix)
            return await routes.handlers[path](request)
        return handle

    async def health(request: Request):
        if not all(routes.ready for routes in all_routes):
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def info(request: Request):
        response = await all_routes[0].info(request)
        return JSONResponse({**json.loads(response.body), "models": names})

    table = [("/health", health, ["GET"]), ("/info", info, ["GET"]),
             ("/v1/models", _model_list(names), ["GET"]),
             ("/metrics", all_routes[0].prometheus, ["GET"])]
    for path, handler, methods in all_routes[0].table():
        if methods == ["POST"]:
            table.append((path, dispatch(path, None), methods))
    for name, routes in by_name.items():
        for path, handler, methods in routes.table():
            if path != "/metrics":
                table.append((f"/models/{name}{path}", dispatch(path, name)
                              if methods == ["POST"] else handler, methods))
    return table


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


class _JsonLines(logging.Formatter):
    """A log record as one JSON object: time, level, target, message and its fields."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"timestamp": self.formatTime(record), "level": record.levelname,
                           "target": record.name, "message": record.getMessage(),
                           **getattr(record, "fields", {})}, default=str)


def _configure_logging(json_output: bool, log_level: str) -> None:
    """pybert's loggers (the start line, the access log, errors) to stderr, as plain lines or
    JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines() if json_output else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pybert")
    root.handlers[:] = [handler]
    root.setLevel(log_level.upper())
    root.propagate = False


def start_fields(model, config: ServeConfig, host: str, port: int, replicas=()) -> dict:
    """What the server says of itself when it starts: the model, how it runs, its limits and
    its address."""
    engine = model.engine
    plan = engine.cpu_plan.summary() if engine.cpu_plan is not None else None
    faster = None  # a float32 CPU engine: would bfloat16 be faster here (--dtype auto)?
    if plan is not None and engine.dtype == torch.float32 and not engine.quantize:
        ratio = time_ratio(engine.config, "bfloat16")
        faster = round(ratio, 3) if ratio is not None and ratio <= AUTO_BFLOAT16_RATIO else None
    return {"model": config.model_id, "architecture": model.architecture,
            "tasks": model.tasks, "dim": model.dim,
            "dtype": str(engine.dtype).replace("torch.", ""), "quantize": engine.quantize,
            "devices": [str(m.engine.device) for m in (model, *replicas)],
            "cpu_plan": None if plan is None else {
                "source": plan["source"], "attention": plan["attention"],
                "gemm_paths": sorted({p for choice in plan["gemm"].values() for _, p in choice}),
                "time_vs_float32": plan["time_vs_float32"]},
            "max_input_length": model.max_input_length,
            "max_batch_tokens": config.batch_tokens,
            "max_client_batch_size": config.max_inputs,
            "max_concurrent_requests": config.max_connections,
            "payload_limit": config.max_body_bytes, "auto_truncate": config.auto_truncate,
            "api_key": config.api_key is not None, "bfloat16_time_vs_float32": faster,
            "grpc_port": config.grpc_port or None,
            "address": f"http://{host if ':' not in host else f'[{host}]'}:{port}"}


def start_line(fields: dict) -> str:
    """The start fields as one readable line."""
    plan = fields["cpu_plan"]
    how = f"{fields['dtype']}" + (f" ({fields['quantize']} weights)" if fields["quantize"]
                                  else "")
    if plan is not None:
        attention = plan["attention"]
        how += (f", CPU plan {plan['source']}: GEMMs by {'/'.join(plan['gemm_paths'])}, "
                + ("attention by flash" if attention["kernel"] == "flash" else
                   f"attention by {attention['kernel']} up to {attention['max_length']} "
                   "tokens, flash beyond"))
    return (f"serving {fields['model']} ({fields['architecture']}, {fields['dim']}-wide "
            f"vectors; {', '.join(fields['tasks'])}) in {how} on "
            f"{', '.join(fields['devices'])}; max input length {fields['max_input_length']} "
            f"tokens; limits: {fields['max_batch_tokens']} tokens per batch, "
            f"{fields['max_client_batch_size']} texts per request, "
            f"{fields['payload_limit']} bytes per body, {fields['max_concurrent_requests']} "
            f"concurrent requests; auto-truncate {'on' if fields['auto_truncate'] else 'off'}"
            f"; api key {'required' if fields['api_key'] else 'none'}; listening on "
            f"{fields['address']}"
            + (f" and gRPC (tei.proto) on port {fields['grpc_port']}" if fields["grpc_port"]
               else "") + (
                f" (bfloat16 takes {fields['bfloat16_time_vs_float32']:.2f}x float32's GEMM "
                "time on this CPU: --dtype auto takes it)"
                if fields["bfloat16_time_vs_float32"] else ""))


def serve(model, host: str = "127.0.0.1", port: int = 3000, config: ServeConfig | None = None,
          log_level: str = "info", replicas=()) -> None:
    """Run the server until SIGTERM or Ctrl-C; requests in flight are finished first.
    ``replicas``: the same model on more devices; ``model`` may be a list of NamedModel
    (several models; see create_app)."""
    import uvicorn

    config = config or ServeConfig()
    served = model if isinstance(model, list) else \
        [NamedModel(config.model_id, model, config, tuple(replicas))]
    server = served[0].config
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in [0, 65535], got {port}")
    _return_large_buffers_to_the_os()
    _raise_open_file_limit(server.max_connections)
    _configure_logging(server.json_output, log_level)
    for s in served:
        fields = start_fields(s.model, s.config, host, port, s.replicas)
        logger.info(start_line(fields), extra={"fields": fields})
    # uvicorn closes idle kept-alive connections after idle_timeout_s and answers 503 beyond
    # max_connections; a request's body must keep arriving (body_timeout_s, read_json).
    uvicorn.run(create_app(served, host=host), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=60, access_log=False,
                timeout_keep_alive=server.idle_timeout_s,
                limit_concurrency=server.max_connections)
