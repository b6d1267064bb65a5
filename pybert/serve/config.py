"""The server's limits and identity."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import check_positive_int

__all__ = ["ServeConfig"]


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
        for name in ("batch_tokens", "max_queue", "max_inputs", "max_text_bytes",
                     "max_body_bytes"):
            check_positive_int(getattr(self, name), name)
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ValueError(f"max_wait_ms must be in [0, 10000], got {self.max_wait_ms!r}")
