"""Retrieval metrics through pytrec_eval, and the markdown comparison table.

Names follow FlagEmbedding/MTEB: ``ndcg_at_10``, ``mrr_at_10``, ``recall_at_1``, ``recall_at_10``,
``recall_at_100`` and ``map`` (average precision over the retrieved top ``k_max``). ``mrr_at_10``
is pytrec_eval's reciprocal rank on each run cut to its top 10 (pytrec_eval has no cut for it).
Queries without a relevance judgement are left out; a judged query that retrieved nothing scores 0.
"""

from __future__ import annotations

import pytrec_eval

METRIC_NAMES = ["ndcg_at_10", "mrr_at_10", "recall_at_1", "recall_at_10", "recall_at_100", "map"]


def top_k(run: dict[str, dict[str, float]], k: int) -> dict[str, dict[str, float]]:
    """Each query's ``k`` best documents (ties broken by id, as trec_eval does)."""
    out = {}
    for qid, scores in run.items():
        ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]
        out[qid] = dict(ranked)
    return out


def per_query_metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{qid: {metric: value}}`` for every judged query."""
    qrels = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items() if docs}
    # pytrec_eval skips queries absent from the run; give them an empty ranking (scores 0).
    run = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in qrels}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.1,10,100", "map"}).evaluate(run)
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top_k(run, 10))
    results = {}
    for qid in qrels:
        scores = full.get(qid, {})
        results[qid] = {
            "ndcg_at_10": scores.get("ndcg_cut_10", 0.0),
            "mrr_at_10": mrr.get(qid, {}).get("recip_rank", 0.0),
            "recall_at_1": scores.get("recall_1", 0.0),
            "recall_at_10": scores.get("recall_10", 0.0),
            "recall_at_100": scores.get("recall_100", 0.0),
            "map": scores.get("map", 0.0),
        }
    return results


def mean_metrics(per_query: dict[str, dict[str, float]]) -> dict[str, float]:
    if not per_query:
        return {name: 0.0 for name in METRIC_NAMES}
    return {name: sum(m[name] for m in per_query.values()) / len(per_query) for name in METRIC_NAMES}


def evaluate_run(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of every metric over the judged queries."""
    return mean_metrics(per_query_metrics(qrels, run))


def markdown_table(results: dict[str, dict[str, float]], metrics: list[str] | None = None) -> str:
    """One row per model, one column per metric, best value of each column in bold."""
    metrics = metrics or METRIC_NAMES
    best = {m: max(r[m] for r in results.values()) for m in metrics}
    lines = ["| model | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name, values in results.items():
        cells = [f"**{values[m]:.4f}**" if values[m] == best[m] and len(results) > 1 else f"{values[m]:.4f}"
                 for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_bootstrap(a: dict[str, float], b: dict[str, float], resamples: int = 10000, confidence: float = 0.95,
                     seed: int = 0) -> dict[str, float]:
    """The mean of ``a - b`` over the queries both score, with a percentile bootstrap interval.

    One retrieval run has no seed spread: resampling the queries (paired, so per-query difficulty cancels) is
    how IR papers say whether a difference outlives the choice of test queries. Also counts the queries
    each side wins. Raises ValueError when the two share no query.
    """
    import numpy as np

    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError("paired_bootstrap: the two runs share no query")
    diffs = np.array([a[q] - b[q] for q in shared], dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return {"mean": float(diffs.mean()), "low": float(np.percentile(means, tail)),
            "high": float(np.percentile(means, 100 - tail)), "queries": len(shared),
            "wins": int((diffs > 0).sum()), "losses": int((diffs < 0).sum())}
