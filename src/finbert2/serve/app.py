"""The FastAPI application: routes, limits, readiness, and the glue between requests and batchers.

``create_app(args)`` returns an app whose models load in the background when it starts: ``/health``
answers at once, ``/ready`` and the model routes answer 503 until the models are loaded and one
warm-up forward pass ran.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from finbert2 import __version__
from finbert2.classify.data import pool_by_owner
from finbert2.retrieve.search import jieba_tokens
from finbert2.segmentation import new_segmenter
from finbert2.serve import compat, schemas
from finbert2.serve.args import ServeArguments
from finbert2.serve.batching import Batcher
from finbert2.serve.errors import ApiError, error_response
from finbert2.serve.metrics import EmbeddingDrift, ServerMetrics, UnknownTokens
from finbert2.serve.models import Embedder, Labeler, Tokenized, load_models, truncated_header
from finbert2.serve.rerank import Ranker, add_rerank_route, load_reranker, rerank_hits
from finbert2.serve.milvus_store import MilvusIndex, open_index
from finbert2.serve.store import DocumentIndex

logger = logging.getLogger("finbert2.serve")

# Routes a request is counted under in /metrics (anything else is "other": no label per unknown path).
ROUTES = ("/", "/embed", "/v1/embeddings", "/classify", "/rerank", "/search", "/index/documents", "/health", "/ready",
          "/info", "/metrics", "/openapi.json", *compat.ROUTES)
# The search page's CJK font (Noto Sans SC, SIL OFL 1.1, from the pylopdf-fonts-zh-cn wheel the toolkit
# already depends on): served, so the page shows Chinese on a machine without a CJK font, offline.
PAGE_FONT = "/fonts/NotoSansSC-Regular.otf"
ROUTES = (*ROUTES, PAGE_FONT)
# Reachable without the API key: probes of a load balancer, and the page and its font (the page asks for
# the key itself; a browser fetches a font without it).
OPEN_ROUTES = {"/health", "/ready", "/", PAGE_FONT}


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def tei_errors(*codes: int) -> dict:
    return {code: {"model": schemas.TEIError} for code in codes}


def openai_errors(*codes: int) -> dict:
    return {code: {"model": schemas.OpenAIError} for code in codes}


# Every refusal a route can give, documented in the OpenAPI schema (and held to by the tests).
MODEL_ROUTE_CODES = (400, 401, 404, 413, 422, 429, 503)


class Server:
    """What one server process holds: settings, models and their batchers, the index, metrics."""

    def __init__(self, args: ServeArguments):
        self.args = args
        self.metrics = ServerMetrics()
        self.metrics.max_concurrent.set(args.max_concurrent_requests)
        self.unknown_tokens: dict[str, UnknownTokens] = {}
        self.drift = EmbeddingDrift()
        self.embedder: Embedder | None = None
        self.labelers: dict[str, Labeler] = {}
        self.reranker: Ranker | None = None
        self.batchers: dict[str, Batcher] = {}
        self.index: DocumentIndex | MilvusIndex | None = None
        self.segmenter = None
        self.ready = False
        self.load_error: str | None = None
        self.in_flight = 0
        self.loaded_at = 0
        # One model thread: forward passes of all models take turns (torch uses every core for each);
        # tokenization and index writes run in the loop's default pool.
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finbert2-model")

    # --- lifecycle -------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load models and the index, and run a warm-up pass (in a thread: /health answers meanwhile)."""
        args = self.args
        self.embedder, self.labelers = load_models(args.retriever, args.classifier or [], args.dtype,
                                                   args.max_length or self._index_max_length(),
                                                   (args.served_model_name or [None])[0])
        self.reranker = load_reranker(args.reranker, args.dtype, args.max_length)
        self.loaded_at = int(time.time())
        if args.index:
            self.segmenter = new_segmenter(args.user_dict)
            encoder = self.embedder.encoder
            self.index = open_index(args.index, self.embedder.dimension, {
                "model_name_or_path": self.embedder.path, "query_instruction": encoder.query_instruction,
                "passage_instruction": encoder.passage_instruction, "pooling": encoder.pooling,
                "max_length": self.embedder.max_length, "bf16": encoder.bf16}, self.segmenter,
                args.window_chars, args.window_stride, args.index_token, args.index_collection)
            self.count_index()
            self._warn_on_index_model_mismatch()
        self.unknown_tokens = {model.name: UnknownTokens(model.tokenizer) for model in self.models()}
        for model in self.models():
            model.warm_up()

    def _warn_on_index_model_mismatch(self) -> None:
        from finbert2.retrieve.index import INDEX_CONFIG, current_index_dir

        config_file = current_index_dir(self.args.index) / INDEX_CONFIG
        if not config_file.is_file():
            return
        config = json.loads(config_file.read_text(encoding="utf-8"))
        encoder = self.embedder.encoder
        for key, ours in (("query_instruction", encoder.query_instruction),
                          ("passage_instruction", encoder.passage_instruction), ("pooling", encoder.pooling)):
            if key in config and config[key] != ours:
                logger.warning("%s was built with %s %r; this retriever uses %r (scores will be off until it "
                               "is rebuilt)", self.args.index, key, config[key], ours)

    def _index_max_length(self) -> int | None:
        from finbert2.retrieve.index import INDEX_CONFIG, current_index_dir

        if self.args.index:
            config = current_index_dir(self.args.index) / INDEX_CONFIG
            if config.is_file():
                return json.loads(config.read_text(encoding="utf-8")).get("max_length")
        return None

    def models(self) -> list[Embedder | Labeler | Ranker]:
        return ([self.embedder] if self.embedder else []) + list(self.labelers.values()) + \
            ([self.reranker] if self.reranker else [])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.model_thread, self.load)
        except Exception as err:  # reported by /ready and /info; /health stays up so the error can be read
            self.load_error = f"{type(err).__name__}: {err}"
            logger.exception("loading the models failed")
            return
        for model in self.models():
            batcher = Batcher(model.name, model.forward, self.model_thread, self.metrics,
                              self.args.max_batch_tokens, self.args.batch_wait_ms / 1000, self.args.min_batch_fill)
            batcher.start()
            self.batchers[model.name] = batcher
        self.ready = True
        logger.info("ready: %s", ", ".join(m.name for m in self.models()))

    async def stop(self) -> None:
        self.ready = False
        for batcher in self.batchers.values():
            await batcher.stop()
        self.model_thread.shutdown(wait=True)

    def search_index(self, query_vector, query: str, top_k: int, mode: str, filters) -> list[dict]:
        self.index.refresh()  # another worker sharing the folder may have written
        self.count_index()
        return self.index.search(query_vector, query, top_k, mode, filters, self.args.rrf_k)

    def count_index(self) -> None:
        if self.index is not None:
            self.metrics.index_documents.set(self.index.documents)
            self.metrics.index_windows.set(self.index.windows)

    # --- request steps ---------------------------------------------------------------------------------
    def require_ready(self) -> None:
        if not self.ready:
            detail = f" (loading failed: {self.load_error})" if self.load_error else ""
            raise ApiError(503, f"model is not ready{detail}", "unhealthy")

    def check_inputs(self, inputs: str | list, param: str, limit: int | None = None) -> list:
        """The inputs as a list (texts, or token arrays), refused when empty or over the route's limit."""
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        limit = limit or self.args.max_client_batch_size
        if not texts:
            raise ApiError(400, f"`{param}` cannot be empty", "empty", param)
        if len(texts) > limit:
            raise ApiError(413, f"batch size {len(texts)} > maximum allowed batch size {limit}", "validation", param)
        if any(not (t.strip() if isinstance(t, str) else t) for t in texts):
            raise ApiError(400, f"`{param}` cannot hold an empty text", "empty", param)
        return texts

    async def tokenize(self, model: Embedder | Labeler, texts: list[str], truncate: bool,
                       param: str) -> Tokenized:
        t0 = time.perf_counter()
        tokenized = await asyncio.get_running_loop().run_in_executor(None, model.tokenize, texts, truncate)
        self.metrics.stage_seconds.labels(model.name, "tokenize").observe(time.perf_counter() - t0)
        content, unknown = self.unknown_tokens[model.name].count(tokenized.rows)
        self.metrics.observe_inputs(model.name, tokenized.lengths, content, unknown,
                                    len(tokenized.too_long) if truncate else 0)
        if tokenized.too_long and not truncate:
            first = tokenized.too_long[0]
            raise ApiError(422, f"input {first} is longer than the model's maximum of {model.max_length} tokens "
                                f"({len(tokenized.too_long)} input(s) too long); send truncate=true to cut them",
                           "validation", param)
        return tokenized

    async def run_model(self, request: Request, model_name: str, rows: list[list[int]]) -> list:
        """The batcher's outputs for ``rows``, or ``ClientGone`` as soon as the client disconnects
        (the request's inputs not yet run are then dropped)."""
        work = asyncio.ensure_future(self.batchers[model_name].submit(rows))
        watcher = asyncio.ensure_future(wait_for_disconnect(request))
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            watcher.cancel()
            return work.result()
        work.cancel()
        raise ClientGone()

    async def embed(self, request: Request, texts: list[str], prompt: str, truncate: bool,
                    normalize: bool, param: str, watch_drift: bool = True) -> tuple[np.ndarray, Tokenized]:
        """``watch_drift``: the vectors count towards the drift gauge (clients' inputs, not indexed documents)."""
        self.require_embedder()
        tokenized = await self.tokenize(self.embedder, [prompt + t for t in texts], truncate, param)
        return await self.embed_tokenized(request, tokenized, normalize, watch_drift), tokenized

    def check_token_ids(self, id_lists: list[list[int]], param: str) -> None:
        """Token arrays must be ids of this model's tokenizer; ids beyond its vocabulary (tiktoken's, which
        OpenAI clients send by default) are refused rather than embedded as noise."""
        vocabulary = len(self.embedder.encoder.tokenizer)
        for i, ids in enumerate(id_lists):
            beyond = [t for t in ids if t >= vocabulary]
            if beyond:
                raise ApiError(422, f"{param}[{i}] holds token id {beyond[0]}, outside this model's vocabulary of "
                                    f"{vocabulary} ids: token arrays must be ids of this model's tokenizer (see "
                                    "/tokenize), not tiktoken's; send the text instead (LangChain: "
                                    "check_embedding_ctx_length=False)", "validation", param)

    def token_arrays(self, id_lists: list[list[int]], truncate: bool, param: str) -> Tokenized:
        self.check_token_ids(id_lists, param)
        tokenized = self.embedder.token_rows(id_lists, truncate)
        if tokenized.too_long and not truncate:
            raise ApiError(422, f"input {tokenized.too_long[0]} is longer than the model's maximum of "
                                f"{self.embedder.max_length} tokens; send truncate=true to cut it", "validation", param)
        return tokenized

    async def embed_tokenized(self, request: Request, tokenized: Tokenized, normalize: bool,
                              watch_drift: bool = True) -> np.ndarray:
        vectors = np.stack(await self.run_model(request, self.embedder.name, tokenized.rows))
        if watch_drift:
            self.drift.observe(vectors)
            # the folder store keeps its vectors in memory (its mean is cached per state); an engine-backed index
            # (Milvus) does not hand them out, so the gauge is absent there
            state = getattr(self.index, "state", None) if self.index is not None else None
            cosine = self.drift.cosine_to_index(state) if state is not None else None
            if cosine is not None:
                self.metrics.embedding_cosine.labels(self.embedder.name).set(cosine)
        if normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors.astype(np.float32)

    def require_embedder(self) -> None:
        if self.embedder is None:
            raise ApiError(404, "this server has no retriever (start it with --retriever)", "not_found")

    def require_index(self) -> DocumentIndex | MilvusIndex:
        self.require_ready()
        if self.index is None:
            raise ApiError(404, "this server has no index (start it with --index)", "not_found")
        return self.index

    def prompt(self, prompt_name: str | None) -> str:
        if prompt_name is None:
            return ""
        prompts = self.embedder.prompts
        if prompt_name not in prompts:
            raise ApiError(422, f"unknown prompt_name '{prompt_name}' (one of {', '.join(prompts)})",
                           "validation", "prompt_name")
        return prompts[prompt_name]

    async def classify(self, request: Request, body: schemas.ClassifyRequest) -> tuple[list[list[dict]], Tokenized]:
        """Each text's labels, best first, with score and whether it is predicted (/classify, /predict)."""
        self.require_ready()
        labeler = self.labeler(body.model)
        texts = self.check_inputs(body.inputs, "inputs")
        tokenized = await self.tokenize(labeler, texts, body.truncate, "inputs")
        window_logits = np.stack(await self.run_model(request, labeler.name, tokenized.rows))
        logits = pool_by_owner(window_logits, np.asarray(tokenized.owners), len(texts))
        predictions = labeler.classifier.predictions(logits)
        scores = logits if body.raw_scores else predictions.probabilities
        chosen = predictions.predicted()
        answers = []
        for i in range(len(texts)):
            picked = chosen[i] if predictions.multi_label else np.eye(len(predictions.label_names))[chosen[i]]
            row = [{"label": name, "score": float(scores[i][j]), "predicted": bool(picked[j])}
                   for j, name in enumerate(predictions.label_names)]
            answers.append(sorted(row, key=lambda item: -item["score"]))
        return answers, tokenized

    def embedding_names(self) -> list[str]:
        """The retriever's name and its aliases (``--served_model_name NAME [ALIAS ...]``)."""
        return list(dict.fromkeys([self.embedder.name, *(self.args.served_model_name or [])[1:]]))

    def check_embedding_model(self, name: str | None) -> None:
        """One embedding model is served, so any name picks it (as TEI does: clients hard-code names like
        text-embedding-3-small); only a classifier's name is a mistake worth a 404."""
        if name is not None and name in self.labelers:
            raise ApiError(404, f"model '{name}' is a classifier; embeddings come from "
                                f"{', '.join(repr(n) for n in self.embedding_names())} (see /v1/models)",
                           "not_found", "model")

    def labeler(self, name: str | None) -> Labeler:
        if not self.labelers:
            raise ApiError(404, "this server has no classifier (start it with --classifier)", "not_found")
        if name is None:
            return next(iter(self.labelers.values()))
        if name not in self.labelers:
            raise ApiError(404, f"no classifier '{name}' (one of {', '.join(self.labelers)})", "not_found", "model")
        return self.labelers[name]

    def info(self) -> dict[str, Any]:
        models = []
        if self.embedder:
            models.append({"name": self.embedder.name, "kind": "retriever", "path": self.embedder.path,
                           "dimension": self.embedder.dimension, "max_length": self.embedder.max_length,
                           "pooling": self.embedder.encoder.pooling, "dtype": self.embedder.dtype,
                           "backend": self.embedder.backend,
                           "prompts": {k: v for k, v in self.embedder.prompts.items() if k != "document"}})
        for labeler in self.labelers.values():
            clf = labeler.classifier
            models.append({"name": labeler.name, "kind": "classifier", "path": labeler.path,
                           "labels": clf.label_names, "multi_label": clf.multi_label,
                           "threshold": clf.threshold if clf.multi_label else None,
                           "max_length": labeler.max_length, "truncation": clf.settings.truncation,
                           "dtype": labeler.dtype, "backend": labeler.backend})
        if self.reranker:
            models.append(self.reranker.info())
        index = None
        if self.index is not None:
            index = {"path": self.index.location, "documents": self.index.documents,
                     "windows": self.index.windows, "window_chars": self.args.window_chars,
                     "window_stride": self.args.window_stride, "rrf_k": self.args.rrf_k}
        a = self.args
        return {"version": __version__, "ready": self.ready, "load_error": self.load_error, "models": models,
                "index": index, "limits": {
                    "max_body_bytes": a.max_body_bytes, "max_client_batch_size": a.max_client_batch_size,
                    "max_concurrent_requests": a.max_concurrent_requests, "max_batch_tokens": a.max_batch_tokens,
                    "min_batch_fill": a.min_batch_fill,
                    "batch_wait_ms": a.batch_wait_ms}, "api_key_required": bool(a.api_key)}


async def wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class Limits:
    """Pure ASGI middleware: API key, body size, concurrency limit, and request metrics, ahead of routing,
    so an oversized body is refused before it is parsed and a refusal has the route's error shape."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        server, path = self.server, scope["path"]
        route = path if path in ROUTES else "other"
        started = time.perf_counter()
        status_seen = {"status": 500}

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status_seen["status"] = message["status"]
            await send(message)

        async def refuse(err: ApiError):
            server.metrics.failures.labels(route, err.error_type).inc()
            await error_response(path, err)(scope, receive, send_counted)

        try:
            if server.args.api_key and path not in OPEN_ROUTES and not authorized(scope, server.args.api_key):
                return await refuse(ApiError(401, "missing or wrong API key (Authorization: Bearer <key>)",
                                             "unauthorized"))
            body = await read_body(scope, receive, server.args.max_body_bytes)
            if body is None:  # the client left while sending
                server.metrics.failures.labels(route, "client_gone").inc()
                return
            if isinstance(body, ApiError):
                return await refuse(body)
            limited = scope["method"] == "POST" or scope["method"] == "DELETE"
            if limited and server.in_flight >= server.args.max_concurrent_requests:
                return await refuse(ApiError(429, "model is overloaded (too many concurrent requests)",
                                             "overloaded"))
            server.in_flight += limited
            server.metrics.in_flight.set(server.in_flight)
            try:
                await self.app(scope, replay(body, receive), send_counted)
            finally:
                server.in_flight -= limited
                server.metrics.in_flight.set(server.in_flight)
        finally:
            server.metrics.requests.labels(route, str(status_seen["status"])).inc()
            server.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)


def authorized(scope, api_key: str) -> bool:
    """Exactly one ``Authorization: Bearer <key>`` header (a bare key, or two headers, is refused)."""
    given = [value for name, value in scope.get("headers") or [] if name.lower() == b"authorization"]
    if len(given) != 1:
        return False
    scheme, _, token = given[0].partition(b" ")
    # constant time: no key guessing by timing
    return scheme.lower() == b"bearer" and hmac.compare_digest(token, api_key.encode("utf-8"))


async def read_body(scope, receive, limit: int) -> bytes | ApiError | None:
    too_large = ApiError(413, f"request body larger than {limit} bytes", "payload_too_large")
    headers = dict(scope.get("headers") or [])
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return too_large
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # a chunked body with no length header
            return too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive):
    """A receive that hands the app the body already read, then the client's own messages (disconnect)."""
    sent = False

    async def receive_replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_replayed


def page_html() -> str:
    return resources.files("finbert2.serve").joinpath("page.html").read_text(encoding="utf-8")


def create_app(args: ServeArguments) -> FastAPI:
    server = Server(args)

    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(server.start())
        yield
        loading.cancel()
        await server.stop()

    app = FastAPI(title="finbert2 serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Embeddings (TEI and OpenAI shapes), hybrid search and classification for RAG.")
    app.state.server = server

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        server.metrics.failures.labels(route_of(request), err.error_type).inc()
        return error_response(request.url.path, err)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        return await api_error(request, ApiError(422, message, "validation", where or None))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        kind = {404: "not_found", 405: "validation"}.get(err.status_code, "validation")
        return await api_error(request, ApiError(err.status_code, str(err.detail), kind))

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, err: ClientGone):
        server.metrics.failures.labels(route_of(request), "client_gone").inc()
        return Response(status_code=499)  # nobody reads it; nginx's code for "client closed request"

    tei = tei_errors(*MODEL_ROUTE_CODES)

    @app.post("/embed", response_model=list[list[float]], responses=tei, tags=["embeddings"],
              summary="Embed texts (TEI shape)")
    async def embed(body: schemas.EmbedRequest, request: Request):
        server.require_ready()
        server.require_embedder()
        texts = server.check_inputs(body.inputs, "inputs")
        vectors, tokenized = await server.embed(request, texts, server.prompt(body.prompt_name), body.truncate,
                                                body.normalize, "inputs")
        return JSONResponse(vectors.tolist(), headers=truncated_header(tokenized))

    @app.post("/v1/embeddings", response_model=schemas.OpenAIEmbeddingResponse,
              responses=openai_errors(*MODEL_ROUTE_CODES), tags=["embeddings"],
              summary="Embed texts (OpenAI shape)")
    async def openai_embeddings(body: schemas.OpenAIEmbeddingRequest, request: Request):
        server.require_ready()
        server.require_embedder()
        server.check_embedding_model(body.model)
        if body.dimensions is not None and body.dimensions > server.embedder.dimension:
            raise ApiError(422, f"dimensions {body.dimensions} > the model's {server.embedder.dimension}",
                           "validation", "dimensions")
        inputs = [body.input] if body.input and isinstance(body.input[0], int) else body.input  # one token array
        texts = server.check_inputs(inputs, "input", args.max_openai_inputs)
        normalize = server.embedder.encoder.normalize
        if isinstance(texts[0], str):
            vectors, tokenized = await server.embed(request, texts, "", body.truncate, normalize, "input")
        else:
            tokenized = server.token_arrays(texts, body.truncate, "input")
            vectors = await server.embed_tokenized(request, tokenized, normalize)
        if body.dimensions is not None:  # Matryoshka-style: the leading dimensions, re-normalised
            vectors = vectors[:, :body.dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        if body.encoding_format == "base64":  # OpenAI: little-endian float32 bytes
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            data = vectors.tolist()
        return JSONResponse({"object": "list", "model": server.embedder.name,
                             "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
                             "usage": {"prompt_tokens": tokenized.tokens, "total_tokens": tokenized.tokens}},
                            headers=truncated_header(tokenized))

    @app.post("/classify", response_model=list[schemas.LabelScore] | list[list[schemas.LabelScore]],
              responses=tei, tags=["classification"], summary="Classify texts (TEI /predict shape)")
    async def classify(body: schemas.ClassifyRequest, request: Request):
        answers, tokenized = await server.classify(request, body)
        return JSONResponse(answers[0] if isinstance(body.inputs, str) else answers,
                            headers=truncated_header(tokenized))

    @app.post("/search", response_model=schemas.SearchResponse, responses=tei, tags=["search"],
              summary="Dense, BM25 or hybrid (reciprocal-rank fusion) search over the index")
    async def search(body: schemas.SearchRequest, request: Request):
        index = server.require_index()
        if not body.query.strip():
            raise ApiError(400, "`query` cannot be empty", "empty", "query")
        query_vector = None
        if body.mode != "bm25":
            vectors, _ = await server.embed(request, [body.query], server.embedder.encoder.query_instruction,
                                            True, True, "query")
            query_vector = vectors[0]
        candidates = max(body.top_k, args.rerank_top_k) if body.rerank else body.top_k
        hits = await asyncio.get_running_loop().run_in_executor(
            None, server.search_index, query_vector, body.query, candidates, body.mode, body.filter)
        if body.rerank:  # the fused top --rerank_top_k windows reordered by the cross-encoder
            hits = await rerank_hits(server, request, body.query, hits, body.top_k)
        return {"query": body.query, "mode": body.mode, "terms": jieba_tokens(body.query, server.segmenter),
                "hits": hits}

    add_rerank_route(app, server, tei)

    @app.post("/index/documents", response_model=schemas.IndexUpdate, responses=tei, tags=["index"],
              summary="Add documents, replacing any with the same id (acknowledged once on disk)")
    async def add_documents(body: schemas.AddDocumentsRequest, request: Request):
        index = server.require_index()
        if len(body.documents) > args.max_client_batch_size:
            raise ApiError(413, f"{len(body.documents)} documents > maximum allowed batch size "
                                f"{args.max_client_batch_size}", "validation", "documents")
        records = [d.model_dump(exclude_none=True) for d in body.documents]  # ids are unique (schema)
        if any(not r["text"].strip() for r in records):
            raise ApiError(400, "a document's `text` cannot be empty", "empty", "documents")
        windows = [index.window_texts(r) for r in records]
        flat = [w for ws in windows for w in ws]
        vectors, _ = await server.embed(request, flat, server.embedder.encoder.passage_instruction, True, True,
                                        "documents", watch_drift=False)
        per_record, start = [], 0
        for ws in windows:
            per_record.append(vectors[start:start + len(ws)])
            start += len(ws)
        replaced = await asyncio.get_running_loop().run_in_executor(None, index.add, records, per_record)
        server.count_index()
        return {"added": len(records) - replaced, "replaced": replaced, "documents": index.documents,
                "windows": index.windows}

    @app.delete("/index/documents", response_model=schemas.IndexUpdate, responses=tei, tags=["index"],
                summary="Delete documents by id")
    async def delete_documents(body: schemas.DeleteDocumentsRequest):
        index = server.require_index()
        ids = body.ids  # unique (schema)
        missing = await asyncio.get_running_loop().run_in_executor(None, index.delete, ids)
        server.count_index()
        return {"deleted": len(ids) - len(missing), "missing": missing, "documents": index.documents,
                "windows": index.windows}

    @app.get("/health", response_model=schemas.Status, responses=tei_errors(503), tags=["operations"],
             summary="Liveness: 200 while loading and when ready, 503 once loading failed (restart me)")
    async def health():
        if server.load_error:
            raise ApiError(503, f"loading failed: {server.load_error}", "unhealthy")
        return {"status": "ok"}

    @app.get("/ready", response_model=schemas.Status, responses=tei_errors(503), tags=["operations"],
             summary="Readiness: 503 until the models are loaded and warmed up")
    async def ready():
        server.require_ready()
        return {"status": "ready"}

    @app.get("/info", responses=tei_errors(401), tags=["operations"],
             summary="Models, dimensions, max lengths, limits, index size")
    async def info():
        return server.info()

    @app.get("/metrics", response_class=Response, responses=tei_errors(401), tags=["operations"],
             summary="Prometheus metrics")
    async def metrics():
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", response_class=HTMLResponse, tags=["search"], summary="Search page")
    async def page():
        return HTMLResponse(page_html())

    @app.get(PAGE_FONT, response_class=FileResponse, tags=["search"], summary="The search page's CJK font")
    async def page_font():
        import pylopdf_fonts_zh_cn

        return FileResponse(pylopdf_fonts_zh_cn.sans_path(), media_type="font/otf",
                            headers={"Cache-Control": "public, max-age=86400"})

    for path, probe in (("/health", health), ("/ready", ready), ("/", page)):
        # load balancers probe with HEAD: the GET's status and headers (the server sends no body)
        app.add_api_route(path, probe, methods=["HEAD"], operation_id=f"{probe.__name__}_head", tags=["operations"],
                          responses=tei_errors(503) if probe is not page else None,
                          summary=f"HEAD {path}: the status of GET {path}, no body")

    app.include_router(compat.router)

    @app.exception_handler(Exception)
    async def backend_error(request: Request, err: Exception):  # a bug or a model failure, never bad input
        logger.exception("request to %s failed", request.url.path)
        return await api_error(request, ApiError(500, f"internal error: {type(err).__name__}", "backend"))

    app.add_middleware(Limits, server=server)
    return app


def route_of(request: Request) -> str:
    return request.url.path if request.url.path in ROUTES else "other"
