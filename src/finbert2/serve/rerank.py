"""The reranker a server holds (``finbert2 serve --reranker DIR``) and its route, TEI's ``/rerank``.

``POST /rerank {"query", "texts", "raw_scores", "return_text", "truncate"}`` answers
``[{"index", "score", "text"?}]``, best first: sigmoid scores of the cross-encoder's logit (the logits
with ``raw_scores``), as TEI does. The pairs go through the server's batcher (sorted by length, cut by
the token budget) with every other route's limits and errors. ``/search`` with ``"rerank": true``
reorders the fused top ``--rerank_top_k`` windows the same way (``rerank_hits``).
"""

from __future__ import annotations

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from finbert2.rerank.modeling import CrossEncoderScorer, sigmoid
from finbert2.serve.errors import ApiError
from finbert2.serve.schemas import RequestBody
from finbert2.serve.models import Tokenized, model_name, served_precision


class RerankRequest(RequestBody):
    """TEI's ``/rerank`` (strict types, finite numbers and valid text, as every body)."""

    query: str = Field(min_length=1)
    texts: list[str] = Field(description="Passages to order by their relevance to the query.")
    truncate: bool = Field(False, description="Cut pairs longer than the model's max length (else 422).")
    raw_scores: bool = Field(False, description="The cross-encoder's logits instead of their sigmoid.")
    return_text: bool = Field(False, description="Return each passage's text with its score.")


class Rank(BaseModel):
    index: int = Field(description="Position of the text in the request.")
    score: float
    text: str | None = Field(None, description="The text, with return_text.")


class Ranker:
    """The cross-encoder with the server's model interface: tokenize pairs, one logit per row."""

    kind = "reranker"

    def __init__(self, path: str, dtype: str = "fp32", max_length: int | None = None):
        self.path, self.name = path, model_name(path)
        self.scorer = CrossEncoderScorer.from_pretrained(path, dtype=dtype, max_length=max_length)
        self.backend, self.dtype = served_precision(self.scorer.model, dtype)  # an exported folder: its own

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    @property
    def tokenizer(self):
        return self.scorer.tokenizer

    def tokenize(self, pairs: list[tuple[str, str]], truncate: bool) -> Tokenized:
        queries, texts = [q for q, _ in pairs], [t for _, t in pairs]
        rows = self.scorer.pair_rows(queries, texts, truncate=False)
        lengths = [len(ids) for ids in rows]  # tokens of each pair before any cut (special tokens included)
        too_long = [i for i, ids in enumerate(rows) if len(ids) > self.max_length]
        if too_long and truncate:  # exactly what the scorer feeds the model for these pairs
            cut = self.scorer.pair_rows([queries[i] for i in too_long], [texts[i] for i in too_long])
            for i, ids in zip(too_long, cut):
                rows[i] = ids
        return Tokenized(rows, list(range(len(rows))), too_long, sum(map(len, rows)), lengths)

    def forward(self, rows: list[list[int]]) -> np.ndarray:
        return self.scorer.logits(rows)

    def warm_up(self) -> None:
        self.forward(self.tokenize([("预热", "预热")], truncate=True).rows)

    def info(self) -> dict:
        return {"name": self.name, "kind": self.kind, "path": self.path, "max_length": self.max_length,
                "backend": self.backend, "dtype": self.dtype}


def load_reranker(path: str | None, dtype: str, max_length: int | None) -> Ranker | None:
    if not path:
        return None
    from finbert2.rerank.evaluate import resolved_rerank_dtype

    return Ranker(path, resolved_rerank_dtype(dtype), max_length)


async def rerank_logits(server, request: Request, query: str, texts: list[str], truncate: bool,
                        param: str) -> np.ndarray:
    """The reranker's logit of every (query, text) pair, through the batcher."""
    if server.reranker is None:
        raise ApiError(404, "this server has no reranker (start it with --reranker)", "not_found")
    tokenized = await server.tokenize(server.reranker, [(query, t) for t in texts], truncate, param)
    return np.asarray(await server.run_model(request, server.reranker.name, tokenized.rows), dtype=np.float32)


async def rerank_hits(server, request: Request, query: str, hits: list[dict], top_k: int) -> list[dict]:
    """``hits`` reordered by the reranker's score of their window text (``rerank_score``), the best ``top_k``."""
    if not hits:
        return hits
    logits = await rerank_logits(server, request, query, [hit["text"] for hit in hits], True, "query")
    for hit, score in zip(hits, sigmoid(logits)):
        hit["rerank_score"] = float(score)
    return sorted(hits, key=lambda hit: -hit["rerank_score"])[:top_k]


def add_rerank_route(app: FastAPI, server, responses: dict) -> None:
    @app.post("/rerank", response_model=list[Rank], responses=responses, tags=["rerank"],
              summary="Order texts by their relevance to a query with the cross-encoder (TEI shape)")
    async def rerank(body: RerankRequest, request: Request):
        server.require_ready()
        if not body.query.strip():
            raise ApiError(400, "`query` cannot be empty", "empty", "query")
        texts = server.check_inputs(body.texts, "texts")
        logits = await rerank_logits(server, request, body.query, texts, body.truncate, "texts")
        scores = logits if body.raw_scores else sigmoid(logits)
        order = np.argsort(-scores, kind="stable")
        return JSONResponse([{"index": int(i), "score": float(scores[i]),
                              **({"text": texts[i]} if body.return_text else {})} for i in order])
