"""The server's Prometheus metrics (``GET /metrics``), in a registry of their own."""

from __future__ import annotations

__all__ = ["Metrics"]


class Metrics:
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
