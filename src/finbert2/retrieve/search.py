"""Searching: faiss indexes over normalised vectors, a BM25 baseline over jieba tokens, document formatting."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from finbert2.errors import ConfigError
from finbert2.segmentation import default_segmenter

logger = logging.getLogger(__name__)

# Upstream's README formats a structured document as these labelled lines, then "<type>：<content>".
DOCUMENT_FIELDS = [("title", "文章标题"), ("company", "公司名称"), ("institution", "发布机构"),
                   ("industry", "行业"), ("author", "作者")]


def format_document(doc: dict[str, Any]) -> str:
    """The text a document is encoded as.

    A record with any of upstream's fields (title, company, institution, industry, author, type,
    content) becomes upstream's layout::

        文章标题：...\\n公司名称：...\\n发布机构：...\\n行业：...\\n作者：...\\n<type>：<content>

    A plain ``{"title", "text"}`` record (our evaluation corpus) becomes ``title + " " + text``.
    """
    if "content" in doc:
        lines = [f"{label}：{doc.get(key) or ''}" for key, label in DOCUMENT_FIELDS]
        kind = doc.get("type") or "正文"
        lines.append(f"{kind}：{doc['content']}")
        return "\n".join(lines)
    title, text = (doc.get("title") or "").strip(), doc.get("text") or ""
    return f"{title} {text}" if title else text


def build_index(vectors: np.ndarray, index_type: str = "flat", nlist: int = 0, nprobe: int = 16):
    """A faiss inner-product index (cosine on unit vectors): exact ``flat``, or ``ivf`` for large corpora.

    ``ivf`` clusters the vectors into ``nlist`` cells (default ~4*sqrt(n)) and searches ``nprobe`` of
    them: faster than flat from ~100k vectors on, at a small recall cost.
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "ivf":
        nlist = nlist or max(1, int(4 * np.sqrt(len(vectors))))
        nlist = min(nlist, len(vectors))  # k-means needs at least one vector per cell
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(nprobe, nlist)
    else:
        raise ConfigError(f"unknown index_type '{index_type}' (flat or ivf)")
    index.add(vectors)
    return index


def search_index(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, rows)`` of the ``k`` nearest vectors per query; rows of -1 mean fewer were found."""
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def dense_run(query_vectors: np.ndarray, query_ids: list[str], doc_vectors: np.ndarray, doc_ids: list[str],
              k: int = 100) -> dict[str, dict[str, float]]:
    """``{qid: {docid: score}}`` of each query's top ``k`` by exact inner product."""
    scores, rows = search_index(build_index(doc_vectors), query_vectors, k)
    return {qid: {doc_ids[r]: float(s) for s, r in zip(scores[i], rows[i]) if r >= 0}
            for i, qid in enumerate(query_ids)}


def jieba_tokens(text: str, segmenter=None) -> list[str]:
    """Search-mode jieba words, lowercased, without whitespace and punctuation-only tokens
    (``segmenter``: a ``new_segmenter(user_dict)``; default: jieba's own dictionary)."""
    return [t.lower() for t in (segmenter or default_segmenter()).lcut_for_search(text)
            if t.strip() and any(ch.isalnum() for ch in t)]


class BM25Retriever:
    """BM25 (bm25s, Lucene scoring, k1=1.5, b=0.75) over jieba words: the lexical baseline."""

    def __init__(self, doc_ids: list[str], doc_texts: list[str] | None, k1: float = 1.5, b: float = 0.75,
                 segmenter=None, doc_tokens: list[list[str]] | None = None):
        """``doc_tokens``: the documents' ``jieba_tokens`` when already known (the server keeps them,
        so an index update does not segment the whole corpus again)."""
        import bm25s

        self.doc_ids = doc_ids
        self.segmenter = segmenter
        self.model = bm25s.BM25(k1=k1, b=b)
        if doc_tokens is None:
            doc_tokens = [jieba_tokens(t, segmenter) for t in doc_texts]
        self.model.index(doc_tokens, show_progress=False)

    def run(self, query_ids: list[str], query_texts: list[str], k: int = 100) -> dict[str, dict[str, float]]:
        k = min(k, len(self.doc_ids))
        docs, scores = self.model.retrieve([jieba_tokens(t, self.segmenter) for t in query_texts], k=k,
                                           show_progress=False)
        # A zero score means no query word occurs in the document: not retrieved.
        return {qid: {self.doc_ids[d]: float(s) for d, s in zip(docs[i], scores[i]) if s > 0}
                for i, qid in enumerate(query_ids)}


# Reciprocal-rank fusion's constant (Cormack et al., 2009): a document's fused score is
# sum over retrievers of 1 / (k + rank); k = 60 damps the weight of the very top ranks.
RRF_K = 60


def reciprocal_rank_fusion(rankings: list[list[str]], k: int = RRF_K) -> dict[str, float]:
    """``{id: fused score}`` over ranked id lists (best first), highest first: the hybrid of dense and
    BM25 retrieval, shared by ``retrieve evaluate --hybrid`` and the server's ``mode=hybrid``."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, doc_id in enumerate(ranking, start=1):
            fused[doc_id] = fused.get(doc_id, 0.0) + 1.0 / (k + rank)
    return dict(sorted(fused.items(), key=lambda item: -item[1]))


def fuse_runs(runs: list[dict[str, dict[str, float]]], k: int = RRF_K) -> dict[str, dict[str, float]]:
    """Per query, the reciprocal-rank fusion of several ``{qid: {docid: score}}`` runs."""
    def ranked(scores: dict[str, float]) -> list[str]:
        return sorted(scores, key=lambda doc: (-scores[doc], doc))  # ties by id, as trec_eval breaks them

    query_ids = dict.fromkeys(q for run in runs for q in run)
    return {qid: reciprocal_rank_fusion([ranked(run.get(qid, {})) for run in runs], k) for qid in query_ids}
