"""Hard-negative mining with BM25 or hybrid (dense + BM25, reciprocal-rank fusion) as the first stage.

    finbert2 retrieve mine --model_name_or_path bm25 --input_file data/demo/retrieval/queries.jsonl \\
        --candidate_pool data/demo/retrieval/candidates.jsonl --range_for_sampling 0-30 --negative_number 7 \\
        --output_file runs/mined_bm25.jsonl
    finbert2 retrieve mine --model_name_or_path runs/retriever --hybrid True ...

A reranker learns best from the passages its first stage puts on top: mining with that stage gives
it exactly those. A candidate is never a positive of any row with the same query text (a question
asked twice with different answers), nor equal to one up to whitespace; negatives are sampled from
ranks ``[start, end)`` of the (fused) ranking, as dense mining does.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from finbert2.retrieve.encoder import DenseEncoder
from finbert2.retrieve.search import BM25Retriever, build_index, reciprocal_rank_fusion, search_index

BM25 = "bm25"


def _normalise(text: str) -> str:
    return "".join(text.split())


def first_stage_rankings(texts: list[str], queries: list[str], depth: int, encoder: DenseEncoder | None,
                         rrf_k: int = 60) -> list[list[int]]:
    """Each query's best ``depth`` rows of ``texts``: BM25's ranking, fused with the dense one (RRF) when an
    encoder is given."""
    row_ids = [str(i) for i in range(len(texts))]
    query_ids = [str(i) for i in range(len(queries))]
    lexical = BM25Retriever(row_ids, texts).run(query_ids, queries, depth)
    rankings = [[int(d) for d in sorted(lexical[q], key=lambda d: (-lexical[q][d], int(d)))] for q in query_ids]
    if encoder is None:
        return rankings
    index = build_index(encoder.encode_passages(texts, show_progress=True))
    _, dense_rows = search_index(index, encoder.encode_queries(queries), depth)
    fused = []
    for ranking, dense in zip(rankings, dense_rows):
        merged = reciprocal_rank_fusion([[str(r) for r in dense if r >= 0], [str(r) for r in ranking]], rrf_k)
        fused.append([int(r) for r in list(merged)[:depth]])
    return fused


def mine_with_first_stage(rows: list[dict[str, Any]], pool: list[str], range_start: int, range_end: int,
                          number: int, encoder: DenseEncoder | None = None, seed: int = 42,
                          fill_random: bool = False) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Rows with ``neg`` mined from BM25's ranking (hybrid with ``encoder``), and statistics of the run."""
    from finbert2.retrieve.mine import random_fill, select_negatives

    rng = random.Random(seed)
    pool_index: dict[str, int] = {}
    texts: list[str] = []
    for text in pool + [p for row in rows for p in row["pos"]]:  # positives join the pool so their ids are known
        key = _normalise(text)
        if key not in pool_index:
            pool_index[key] = len(texts)
            texts.append(text)
    positives_of_query: dict[str, set[int]] = {}
    for row in rows:
        positives_of_query.setdefault(_normalise(row["query"]), set()).update(
            pool_index[_normalise(p)] for p in row["pos"])
    rankings = first_stage_rankings(texts, [row["query"] for row in rows], range_end, encoder)
    no_vectors = np.zeros((len(texts), 1), dtype=np.float32)  # random_fill reads vectors only for a margin

    mined, short, filled = [], 0, 0
    for row, ranking in zip(rows, rankings):
        positive_ids = positives_of_query[_normalise(row["query"])]
        chosen = select_negatives(ranking, [0.0] * len(ranking), positive_ids, 0.0, set(), range_start, range_end,
                                  number, None, rng)
        if len(chosen) < number and fill_random:
            extra = random_fill(no_vectors, no_vectors[0], positive_ids | set(ranking) | set(chosen), 0.0,
                                number - len(chosen), None, rng)
            filled += len(extra)
            chosen = chosen + extra
        short += len(chosen) < number
        mined.append({"query": row["query"], "pos": row["pos"], "neg": [texts[r] for r in chosen]})
    stats = {"queries": len(rows), "pool_size": len(texts), "first_stage": "hybrid" if encoder else BM25,
             "queries_short_of_negatives": short, "mean_negatives": float(np.mean([len(r["neg"]) for r in mined])),
             "queries_without_negatives": sum(1 for r in mined if not r["neg"]), "random_negatives": filled}
    return mined, stats
