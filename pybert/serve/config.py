"""The server's limits and identity."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import check_int

__all__ = ["ServeConfig"]


@dataclass(frozen=True)
class ServeConfig:
    """Every limit of the server (docs/security.md says what each bounds)."""

    batch_tokens: int = 16384     # tokens of one packed engine call (a longer request runs alone)
    max_wait_ms: float = 2.0      # how long the batcher waits for more work once it has some
    max_queue: int = 4096         # sequences waiting at most; beyond it, 503 + Retry-After
    max_inputs: int = 256         # texts per request
    max_text_bytes: int = 65536   # UTF-8 bytes per text
    max_body_bytes: int = 8 << 20
    max_masks: int = 1024         # mask tokens per /fill-mask request
    max_reply_bytes: int = 64 << 20  # a reply larger than this answers 413
    max_buffered_bytes: int = 256 << 20  # request bodies held at once, all connections
    body_timeout_s: float = 10.0  # the longest wait for the next piece of a request's body
    max_connections: int = 1024   # concurrent connections (and requests); beyond: 503
    idle_timeout_s: float = 5.0   # a kept-alive connection with no request is closed
    api_key: str | None = None
    model_id: str = "pybert"      # the name /info and /v1/embeddings report
    auto_truncate: bool = False   # cut over-long inputs of a request that does not say
    json_output: bool = False     # the start line and the access log as JSON lines

    def __post_init__(self):
        for name in ("batch_tokens", "max_queue", "max_inputs", "max_text_bytes",
                     "max_body_bytes", "max_masks", "max_reply_bytes", "max_buffered_bytes",
                     "max_connections"):
            check_int(getattr(self, name), name)
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ValueError(f"max_wait_ms must be in [0, 10000], got {self.max_wait_ms!r}")
        for name in ("body_timeout_s", "idle_timeout_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise ValueError(f"{name} must be in (0, 3600], got {getattr(self, name)!r}")
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError(f"max_buffered_bytes ({self.max_buffered_bytes}) must hold one "
                             f"body of max_body_bytes ({self.max_body_bytes})")
