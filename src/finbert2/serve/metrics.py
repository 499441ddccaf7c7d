"""Prometheus metrics of one server (its own registry, so several apps in one process never collide)."""

from __future__ import annotations

import itertools
import re

import numpy as np
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
# Padded tokens of a forward pass over --max_batch_tokens (above 1: one input longer than the budget).
BATCH_FILL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
INPUT_TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
# Inputs the running mean embedding averages over: an exact mean up to this many, then an exponential
# moving average with weight 1/DRIFT_WINDOW (so it follows a change within a few thousand inputs).
DRIFT_WINDOW = 1000
# SentencePiece's byte-fallback pieces: text the vocabulary has no piece for, spelled byte by byte.
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


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
        # Saturation and input drift: what the alert rules in deploy/prometheus/alerts.yml read.
        self.max_concurrent = Gauge("finbert2_max_concurrent_requests",
                                    "Requests admitted at once (--max_concurrent_requests); more get 429", registry=r)
        self.batch_fill = Histogram("finbert2_batch_fill_ratio",
                                    "Padded tokens per forward pass over --max_batch_tokens", ["model"],
                                    buckets=BATCH_FILL_BUCKETS, registry=r)
        self.input_tokens = Histogram("finbert2_input_tokens", "Tokens per input, before any truncation",
                                      ["model"], buckets=INPUT_TOKEN_BUCKETS, registry=r)
        self.content_tokens = Counter("finbert2_content_tokens", "Tokens fed to the model, special tokens excluded",
                                      ["model"], registry=r)
        self.unknown_tokens = Counter("finbert2_unknown_tokens",
                                      "Content tokens that are the unknown token or a byte-fallback piece",
                                      ["model"], registry=r)
        self.truncated_inputs = Counter("finbert2_truncated_inputs", "Inputs cut to the model's maximum length",
                                        ["model"], registry=r)
        self.embedding_cosine = Gauge("finbert2_embedding_mean_cosine",
                                      f"Cosine of the running mean of served unit embeddings (last ~{DRIFT_WINDOW} "
                                      f"inputs) to the mean vector of the index", ["model"], registry=r)

    def observe_inputs(self, model: str, lengths: list[int], content: int, unknown: int, truncated: int) -> None:
        for length in lengths:
            self.input_tokens.labels(model).observe(length)
        self.content_tokens.labels(model).inc(content)
        self.unknown_tokens.labels(model).inc(unknown)
        self.truncated_inputs.labels(model).inc(truncated)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class UnknownTokens:
    """Counts the tokens that stand for text a tokenizer could not represent: its unknown token
    (WordPiece's ``[UNK]``) and SentencePiece's byte-fallback pieces (``<0xE4>``)."""

    def __init__(self, tokenizer):
        unknown = {i for piece, i in tokenizer.get_vocab().items() if BYTE_PIECE.fullmatch(piece)}
        if tokenizer.unk_token_id is not None:
            unknown.add(tokenizer.unk_token_id)
        self.unknown = np.array(sorted(unknown), dtype=np.int64)
        self.special = np.array(sorted(set(tokenizer.all_special_ids) - unknown), dtype=np.int64)

    def count(self, rows: list[list[int]]) -> tuple[int, int]:
        """``(content tokens, unknown ones)`` of token id rows (special tokens are no content)."""
        ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64)
        content = ids[~np.isin(ids, self.special)]
        return len(content), int(np.isin(content, self.unknown).sum())


class EmbeddingDrift:
    """The running mean of the unit embeddings a server hands out, and its cosine to a reference
    mean (the index's): a falling cosine says the inputs moved away from what the index holds."""

    def __init__(self, window: int = DRIFT_WINDOW):
        self.window, self.seen = window, 0
        self.mean: np.ndarray | None = None
        self._index_state, self._index_mean = None, None

    def observe(self, vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float64)  # 1 - cosine is small: keep float32 rounding out of it
        units = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        for unit in units:
            self.seen += 1
            self.mean = unit.copy() if self.mean is None else self.mean + (unit - self.mean) / min(self.seen,
                                                                                                  self.window)

    def cosine(self, reference: np.ndarray | None) -> float | None:
        if self.mean is None or reference is None:
            return None
        norms = np.linalg.norm(self.mean) * np.linalg.norm(reference)
        return float(self.mean @ reference / norms) if norms > 0 else None

    def cosine_to_index(self, state) -> float | None:
        """:meth:`cosine` to the mean row of an index state (``store.IndexState``; immutable, so its
        mean is computed once per state, i.e. after each index write)."""
        if state is not self._index_state:
            self._index_state = state
            self._index_mean = state.vectors.astype(np.float64).mean(axis=0) if len(state.vectors) else None
        return self.cosine(self._index_mean)
