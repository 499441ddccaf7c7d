"""Two-stage retrieval: a first stage's top K reordered by the cross-encoder.

    finbert2 retrieve evaluate --eval_data data/demo/retrieval/eval --models bm25 runs/retriever --hybrid True \\
        --rerank runs/reranker --rerank_top_k 50 --output_dir runs/eval_rerank

adds a ``<first>+rerank`` row per first stage (BM25, each dense model, each hybrid) to the table, with
its added latency per query in ``metrics.json`` and ``results.md``. Documents below the top K keep
their first-stage order after the reranked ones, so recall@100 is the first stage's.
"""

from __future__ import annotations

import time

import numpy as np

from finbert2.data import RetrievalEvalData
from finbert2.rerank.modeling import CrossEncoderScorer
from finbert2.retrieve.metrics import top_k
from finbert2.retrieve.search import format_document


def rerank_run(scorer: CrossEncoderScorer, data: RetrievalEvalData, first_run: dict[str, dict[str, float]],
               k: int) -> tuple[dict[str, dict[str, float]], list[float]]:
    """``(run, seconds per query)``: each query's top ``k`` of ``first_run`` scored by ``scorer`` and put
    ahead of the rest of its first-stage ranking."""
    reranked, seconds = {}, []
    for qid, ranked in top_k(first_run, len(data.corpus)).items():
        ids = list(ranked)
        head, tail = ids[:k], ids[k:]
        started = time.perf_counter()
        logits = scorer.score(data.queries[qid], [format_document(data.corpus[d]) for d in head], raw=True)
        seconds.append(time.perf_counter() - started)
        # Reranked documents score above every tail document: logits shifted above the tail's rank scores.
        base = float(len(tail)) + 1.0
        order = np.argsort(-logits, kind="stable")
        run = {head[i]: base + float(len(head) - rank) for rank, i in enumerate(order)}
        run.update({doc: float(len(tail) - rank) for rank, doc in enumerate(tail)})
        reranked[qid] = run
    return reranked, seconds


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """Mean and p95 milliseconds per query."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    if not len(ms):
        return {"ms_per_query": 0.0, "p95_ms_per_query": 0.0}
    return {"ms_per_query": float(ms.mean()), "p95_ms_per_query": float(np.percentile(ms, 95))}


def reranker_labels(names: list[str]) -> dict[str, str]:
    """Row suffix per reranker: ``rerank`` for one, else each folder's name."""
    from finbert2.retrieve.evaluate import model_label

    if len(names) == 1:
        return {names[0]: "rerank"}
    labels: dict[str, str] = {}
    for name in names:
        labels[name] = model_label(name, set(labels.values()))
    return labels


def load_rerankers(names: list[str], dtype: str, max_length: int | None = None) -> dict[str, CrossEncoderScorer]:
    """Every reranker loaded before any work starts (a bad folder fails first), keyed by row suffix."""
    from finbert2.precision import resolve_bf16

    if dtype == "auto":
        dtype = "bf16" if resolve_bf16("auto").bf16 else "fp32"
    return {label: CrossEncoderScorer.from_pretrained(name, dtype=dtype, max_length=max_length)
            for name, label in reranker_labels(names).items()}


def rerank_rows(rerankers: dict[str, CrossEncoderScorer], data: RetrievalEvalData,
                first_runs: dict[str, dict[str, dict[str, float]]], k: int):
    """``(row label, run, seconds, latency summary)`` for every first stage reranked by every reranker."""
    for first, run in first_runs.items():
        for suffix, scorer in rerankers.items():
            started = time.perf_counter()
            reranked, seconds = rerank_run(scorer, data, run, k)
            yield f"{first}+{suffix}", reranked, time.perf_counter() - started, latency_summary(seconds)


def latency_table(flat: dict, k: int) -> str:
    """The reranked rows' added milliseconds per query (mean, p95), from ``<label>_ms_per_query`` entries."""
    rows = [(key[: -len("_ms_per_query")], value) for key, value in flat.items()
            if key.endswith("_ms_per_query") and not key.endswith("_p95_ms_per_query")]
    lines = ["", f"## Reranking latency (top {k}, ms per query)", "", "| model | mean | p95 |", "|---|---:|---:|"]
    lines += [f"| {label} | {mean:.1f} | {flat[f'{label}_p95_ms_per_query']:.1f} |" for label, mean in rows]
    return "\n".join(lines) + "\n"
