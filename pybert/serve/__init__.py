"""``pybert serve``: a text model over HTTP with dynamic batching (the ``serve`` extra:
starlette, uvicorn, prometheus-client).

``config`` (the limits), ``batcher`` (the queue and the one thread that runs the engine; no
HTTP), ``http`` (errors and request checks), ``metrics`` (Prometheus), ``routes`` (one method
per route), ``app`` (the Starlette app and ``serve``). ``create_app`` and ``serve`` import the
extra when first used, so the limits and the batcher import without it (the CLI's help)."""

from .batcher import Batcher, BatcherPool, QueueFull, RequestTooLarge
from .config import ServeConfig

__all__ = ["Batcher", "BatcherPool", "QueueFull", "RequestTooLarge", "ServeConfig", "create_app",
           "serve"]


def __getattr__(name):
    if name in ("create_app", "serve"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'pybert.serve' has no attribute {name!r}")
