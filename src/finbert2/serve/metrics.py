"""Prometheus metrics of one server (its own registry, so several apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Seconds: from sub-millisecond tokenization to multi-second long batches.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BATCH_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("finbert2_requests", "Requests answered, by route and status code",
                                ["route", "status"], registry=r)
        self.failures = Counter("finbert2_request_failures", "Requests refused or failed, by route and error type",
                                ["route", "error_type"], registry=r)
        self.request_seconds = Histogram("finbert2_request_duration_seconds", "Whole request latency",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram("finbert2_stage_duration_seconds",
                                       "Latency by stage: queue (waiting for a batch), tokenize, inference",
                                       ["model", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("finbert2_batch_size", "Inputs per forward pass", ["model"],
                                    buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram("finbert2_batch_tokens", "Padded tokens per forward pass", ["model"],
                                      buckets=BATCH_TOKEN_BUCKETS, registry=r)
        self.queue_depth = Gauge("finbert2_queue_depth", "Inputs waiting for a forward pass", ["model"], registry=r)
        self.in_flight = Gauge("finbert2_requests_in_flight", "Requests admitted and not yet answered", registry=r)
        self.index_documents = Gauge("finbert2_index_documents", "Documents in the search index", registry=r)
        self.index_windows = Gauge("finbert2_index_windows", "Indexed windows (vectors) in the search index",
                                   registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
