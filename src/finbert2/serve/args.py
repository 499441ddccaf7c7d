"""Arguments of ``finbert2 serve``; defaults follow text-embeddings-inference (TEI) where it has one."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from finbert2.errors import ConfigError
from finbert2.export.runtime import BACKENDS, check_backend
from finbert2.retrieve.encoder import CPU_BATCH_TOKENS
from finbert2.serve.milvus_store import MILVUS_TOKEN_ENV

API_KEY_ENV = "FINBERT2_API_KEY"
DTYPES = ("auto", "fp32", "bf16", "int8")


@dataclass
class ServeArguments:
    retriever: str | None = field(default=None, metadata={
        "help": "Retriever folder (or hub id) for /embed, /v1/embeddings and /search."})
    reranker: str | None = field(default=None, metadata={
        "help": "Reranker folder (`finbert2 rerank train`, or any one-logit cross-encoder) for /rerank and "
                "/search's rerank."})
    rerank_top_k: int = field(default=50, metadata={
        "help": "Hits /search reranks when asked (its fused top K; at least the request's top_k)."})
    index: str | None = field(default=None, metadata={
        "help": "Index for /search and /index/documents: a folder (from `finbert2 retrieve index`, or a new "
                "folder), a Milvus Lite file (*.db: embedded Milvus) or a Milvus server (http(s)://host:port)."})
    index_token: str | None = field(default=None, metadata={
        "help": f"Token of the Milvus server in --index ('user:password' or an API key; default: "
                f"${MILVUS_TOKEN_ENV} when set)."})
    index_collection: str = field(default="finbert2_windows", metadata={
        "help": "Collection of a Milvus --index (several indexes can share one Milvus server)."})
    classifier: list[str] | None = field(default=None, metadata={
        "help": "Classifier folder(s) for /classify; a request picks one by 'model' (folder name), default the first."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    port: int = field(default=8000, metadata={"help": "TCP port."})
    dtype: str = field(default="auto", metadata={
        "help": "auto (bf16 where the hardware runs it natively: a bf16 GPU or a CPU with AVX512-BF16/AMX; fp32 "
                "elsewhere), fp32, bf16 (autocast) or int8 (dynamic quantisation of the linear layers)."})
    backend: str = field(default="auto", metadata={
        "help": "auto (from the folders: onnx or openvino for a `finbert2 export` folder, else torch), torch, onnx "
                "or openvino (a folder of another backend is refused). An exported model runs at the precision it "
                "was exported and checked at."})
    api_key: str | None = field(default=None, metadata={
        "help": f"Require 'Authorization: Bearer <key>' on every route but /health, /ready and / "
                f"(default: ${API_KEY_ENV} when set)."})
    max_length: int | None = field(default=None, metadata={
        "help": "Longest model input in tokens (default: the index's, else 512, capped by the model)."})
    max_batch_tokens: int = field(default=CPU_BATCH_TOKENS, metadata={
        "help": "Padded tokens per forward pass (TEI: max-batch-tokens; its 16384 suits a GPU: on a CPU, batches "
                "past a few thousand tokens leave the caches and run slower per token)."})
    min_batch_fill: float = field(default=0.5, metadata={
        "help": "An input joins a forward pass only if its own tokens fill at least this share of the pass's "
                "width (0: any): concurrent requests of mixed lengths then pad little."})
    max_client_batch_size: int = field(default=32, metadata={
        "help": "Inputs per request on the TEI routes (TEI's default 32); more: 413."})
    max_openai_inputs: int = field(default=2048, metadata={
        "help": "Inputs per /v1/embeddings request (OpenAI's limit 2048; run in batches inside); more: 413."})
    max_concurrent_requests: int = field(default=512, metadata={
        "help": "Requests admitted at once (TEI's default 512); more: 429."})
    max_body_bytes: int = field(default=2_000_000, metadata={"help": "Largest request body (TEI: 2 MB); more: 413."})
    batch_wait_ms: float = field(default=2.0, metadata={"help": "Milliseconds a batch waits for more requests."})
    window_chars: int = field(default=400, metadata={"help": "Characters per indexed window (upstream: 400)."})
    window_stride: int = field(default=380, metadata={"help": "Characters between window starts (upstream: 380)."})
    rrf_k: int = field(default=60, metadata={"help": "Reciprocal-rank fusion constant of mode=hybrid."})
    user_dict: str | None = field(default=None, metadata={"help": "jieba user dictionary for BM25."})
    served_model_name: list[str] | None = field(default=None, metadata={
        "help": "The retriever's name in /v1/embeddings, /v1/models and /info (default: its folder name); "
                "further names are aliases listed by /v1/models."})
    graceful_timeout: float = field(default=30.0, metadata={"help": "Seconds SIGTERM waits for in-flight requests."})

    def __post_init__(self):
        if not self.retriever and not self.classifier and not self.reranker:
            raise ConfigError("finbert2 serve: give --retriever, --classifier and/or --reranker")
        if self.index and not self.retriever:
            raise ConfigError("finbert2 serve: --index needs --retriever (documents are encoded with it)")
        if self.backend not in ("auto", *BACKENDS):
            raise ConfigError(f"finbert2 serve: backend must be one of auto, {', '.join(BACKENDS)}")
        for path in [self.retriever, self.reranker, *(self.classifier or [])]:
            if path:  # before any loading: a folder of another backend is a usage error
                check_backend(path, self.backend)
        if self.dtype not in DTYPES:
            raise ConfigError(f"finbert2 serve: dtype must be one of {', '.join(DTYPES)}")
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        if self.index_token is None:
            self.index_token = os.environ.get(MILVUS_TOKEN_ENV) or None
        if not 0 < self.window_stride <= self.window_chars:
            raise ConfigError("finbert2 serve: need 0 < window_stride <= window_chars")
        if not 0 <= self.min_batch_fill <= 1:
            raise ConfigError("finbert2 serve: --min_batch_fill must be in [0, 1]")
        if self.served_model_name and len(set(self.served_model_name)) < len(self.served_model_name):
            raise ConfigError("finbert2 serve: --served_model_name repeats a name")
        for name in ("max_batch_tokens", "max_client_batch_size", "max_openai_inputs", "max_concurrent_requests",
                     "max_body_bytes", "rrf_k", "rerank_top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"finbert2 serve: {name} must be at least 1")
