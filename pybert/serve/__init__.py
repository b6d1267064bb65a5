"""``pybert serve``: a text model over HTTP with dynamic batching (the ``serve`` extra:
starlette, uvicorn, prometheus-client).

``config`` (the limits), ``batcher`` (the queue and the one thread that runs the engine; no
HTTP), ``http`` (errors and request checks), ``metrics`` (Prometheus), ``routes`` (one method
per route), ``app`` (the Starlette app and ``serve``)."""

from .app import create_app, serve
from .batcher import Batcher, QueueFull
from .config import ServeConfig

__all__ = ["Batcher", "QueueFull", "ServeConfig", "create_app", "serve"]
