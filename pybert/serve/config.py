"""The server's limits and identity, each written once: its default, its command-line flags
(text-embeddings-inference's spelling first, where TEI has the option), the environment
variable TEI reads it from, and its help. ``pybert serve``'s arguments are made from these
fields (``cli_options``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..config import BATCH_TOKENS, check_int

__all__ = ["ServeConfig", "cli_options", "per_model_options"]


def _option(default, *flags: str, env: str | None = None, help: str,  # noqa: A002
            per_model: bool = False):
    """A field of ServeConfig; ``per_model``: each model of a server may have its own (in
    ``--model-config``), the others are the server's."""
    return field(default=default, metadata={"flags": flags, "env": env, "help": help,
                                            "per_model": per_model})


@dataclass(frozen=True)
class ServeConfig:
    """Every limit of the server (docs/security.md says what each bounds)."""

    batch_tokens: int = _option(BATCH_TOKENS, "--max-batch-tokens", "--batch-tokens",
                                env="MAX_BATCH_TOKENS",
                                help="tokens per packed engine call (a longer request runs "
                                     "alone)", per_model=True)
    max_wait_ms: float = _option(2.0, "--max-wait-ms",
                                 help="how long a batch waits for more requests once it has "
                                      "some", per_model=True)
    max_queue: int = _option(4096, "--max-queue",
                             help="sequences queued at most (beyond: 503 + Retry-After)",
                             per_model=True)
    max_inputs: int = _option(256, "--max-client-batch-size", "--max-inputs",
                              env="MAX_CLIENT_BATCH_SIZE", help="texts per request (TEI: 32)",
                              per_model=True)
    split_client_batches: bool = _option(False, "--split-client-batches",
                                         env="SPLIT_CLIENT_BATCHES",
                                         help="take a request of more texts than "
                                              "--max-client-batch-size (up to --max-queue) and "
                                              "run it as parts of at most that many, answered "
                                              "in order (default: refuse it with 413)",
                                         per_model=True)
    max_text_bytes: int = _option(65536, "--max-text-bytes", help="UTF-8 bytes per text",
                                  per_model=True)
    max_body_bytes: int = _option(8 << 20, "--payload-limit", "--max-body-bytes",
                                  env="PAYLOAD_LIMIT",
                                  help="bytes of one request's body (beyond: 413)")
    max_masks: int = _option(1024, "--max-masks",
                             help="mask tokens per /fill-mask request (beyond: 413)",
                             per_model=True)
    max_reply_bytes: int = _option(64 << 20, "--max-reply-bytes",
                                   help="bytes of one reply (beyond: 413)")
    max_buffered_bytes: int = _option(256 << 20, "--max-buffered-bytes",
                                      help="bytes of request bodies held at once, all "
                                           "connections together (beyond: 503)")
    body_timeout_s: float = _option(10.0, "--body-timeout",
                                    help="seconds to wait for the next piece of a request's "
                                         "body (beyond: 408)")
    max_connections: int = _option(1024, "--max-concurrent-requests", "--max-connections",
                                   env="MAX_CONCURRENT_REQUESTS",
                                   help="concurrent connections and requests (beyond: 503)")
    idle_timeout_s: float = _option(5.0, "--idle-timeout",
                                    help="seconds a kept-alive connection may wait for its "
                                         "next request")
    api_key: str | None = _option(None, "--api-key", env="API_KEY",
                                  help="require this bearer token on every route but /health "
                                       "(also $PYBERT_API_KEY)")
    model_id: str = _option("pybert", "--served-model-name", env="SERVED_MODEL_NAME",
                            help="the name /info and /v1/embeddings report (default: the "
                                 "model id, or the directory's name)", per_model=True)
    auto_truncate: bool = _option(False, "--auto-truncate", env="AUTO_TRUNCATE",
                                  help="cut over-long inputs of a request that does not say "
                                       "\"truncate\" (default: refuse them with 413)",
                                  per_model=True)
    memory_budget: int = _option(0, "--memory-budget",
                                 help="bytes the served models may take together on a "
                                      "device, each its weights and one batch's activations; "
                                      "a server that would take more is refused at start "
                                      "(0: the memory free when it starts)")
    grpc_port: int = _option(0, "--grpc-port",
                             help="also serve text-embeddings-inference's gRPC API (tei.proto) "
                                  "on this port, same host (the grpc extra: grpcio, "
                                  "grpcio-tools; 0: none)")
    json_output: bool = _option(False, "--json-output", env="JSON_OUTPUT",
                                help="log (the start line, the access log) as JSON lines")

    @property
    def texts_per_request(self) -> int:
        """The most texts (or token arrays, or pairs) one request may hold: max_inputs, or with
        split_client_batches as many as the queue takes (run in parts of max_inputs)."""
        return max(self.max_inputs, self.max_queue) if self.split_client_batches else \
            self.max_inputs

    def __post_init__(self):
        for name in ("batch_tokens", "max_queue", "max_inputs", "max_text_bytes",
                     "max_body_bytes", "max_masks", "max_reply_bytes", "max_buffered_bytes",
                     "max_connections"):
            check_int(getattr(self, name), name)
        check_int(self.memory_budget, "memory_budget", minimum=0)
        if not 0 <= check_int(self.grpc_port, "grpc_port", minimum=0) <= 65535:
            raise ValueError(f"grpc_port must be in [0, 65535], got {self.grpc_port}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ValueError(f"max_wait_ms must be in [0, 10000], got {self.max_wait_ms!r}")
        for name in ("body_timeout_s", "idle_timeout_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise ValueError(f"{name} must be in (0, 3600], got {getattr(self, name)!r}")
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError(f"max_buffered_bytes ({self.max_buffered_bytes}) must hold one "
                             f"body of max_body_bytes ({self.max_body_bytes})")


def per_model_options() -> set[str]:
    """The ServeConfig fields each served model may set for itself."""
    return {f.name for f in dataclasses.fields(ServeConfig) if f.metadata["per_model"]}


def cli_options() -> list[tuple[str, tuple[str, ...], str | None, object, type, str]]:
    """(field name, flags, environment variable, default, type, help) of every ServeConfig
    field, for the command line."""
    out = []
    for f in dataclasses.fields(ServeConfig):
        kind = {"int": int, "float": float, "bool": bool}.get(str(f.type), str)
        out.append((f.name, f.metadata["flags"], f.metadata["env"], f.default, kind,
                    f.metadata["help"]))
    return out
