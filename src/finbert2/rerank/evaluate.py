"""Two-stage retrieval: a first stage's top K reordered by the cross-encoder.

    finbert2 retrieve evaluate --eval_data data/demo/retrieval/eval --models bm25 runs/retriever --hybrid True \\
        --rerank runs/reranker --rerank_top_k 50 --output_dir runs/eval_rerank

adds a ``<first>+rerank`` row per first stage (BM25, each dense model, each hybrid) to the table, with
its added latency per query in ``metrics.json`` and ``results.md``; ``--rerank_interpolation 0.3 0.5``
adds ``<first>+rerank@0.3`` ... rows whose top K is ordered by 0.3 x the reranker's scores + 0.7 x the
first stage's (each min-max normalised per query; the logits are computed once for all alphas), so the
alpha can be chosen on a validation folder and then applied to the test folder. Documents below the
top K keep their first-stage order after the reranked ones, so recall@100 is the first stage's.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from finbert2.data import RetrievalEvalData
from finbert2.rerank.modeling import CrossEncoderScorer
from finbert2.retrieve.metrics import top_k
from finbert2.retrieve.search import format_document


def minmax(scores: np.ndarray) -> np.ndarray:
    """Scores mapped onto [0, 1] within one query's list (all zeros when they are all equal)."""
    low, span = float(scores.min()), float(scores.max() - scores.min())
    return (scores - low) / span if span > 0 else np.zeros_like(scores)


def interpolated(logits: np.ndarray, first_scores: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha`` x the reranker's scores + (1 - ``alpha``) x the first stage's, each min-max normalised over the
    reranked list (the score interpolation of BM25 with a cross-encoder, as in Pyserini's hybrid runs):
    alpha 1 is the reranker alone, alpha 0 the first stage's order."""
    if alpha == 1.0:
        return logits
    return alpha * minmax(np.asarray(logits, dtype=np.float64)) + (1 - alpha) * minmax(np.asarray(first_scores, dtype=np.float64))


def matched_window(query_words: set[str], text: str, window_chars: int) -> str:
    """The ``window_chars`` characters of ``text`` (windows every half window) that hold the most distinct words of
    the query, then the most of their occurrences (BM25's words, jieba); the first such window on a tie, the
    text itself when it is no longer. A long passage then costs the reranker one short pair, cut where the
    lexical match is, rather than its head."""
    from finbert2.retrieve.search import jieba_tokens
    from finbert2.serve.store import split_windows

    if len(text) <= window_chars:
        return text
    best, best_key = text[:window_chars], (-1, -1)
    for window in split_windows(text, window_chars, max(1, window_chars // 2)):
        words = [w for w in jieba_tokens(window) if w in query_words]
        key = (len(set(words)), len(words))
        if key > best_key:
            best, best_key = window, key
    return best


def rerank_runs(scorer: CrossEncoderScorer, data: RetrievalEvalData, first_run: dict[str, dict[str, float]],
                k: int, alphas: tuple[float, ...] = (1.0,),
                window_chars: int | None = None) -> tuple[dict[float, dict[str, dict[str, float]]], list[float]]:
    """``({alpha: run}, seconds per query)``: each query's top ``k`` of ``first_run`` scored once by ``scorer``,
    ordered by ``interpolated(logits, first-stage scores, alpha)`` for every alpha, and put ahead of the rest
    of its first-stage ranking. With ``window_chars``, each passage longer than that is scored by its
    ``matched_window`` (the window's choice counts in the latency)."""
    from finbert2.retrieve.search import jieba_tokens

    runs: dict[float, dict[str, dict[str, float]]] = {alpha: {} for alpha in alphas}
    seconds = []
    # A CPU pass over a validation split takes minutes: show it, also inside the Trainer's evaluation.
    for qid, ranked in tqdm(top_k(first_run, len(data.corpus)).items(), desc=f"reranking top {k}", unit="query",
                            mininterval=5):
        ids = list(ranked)
        head, tail = ids[:k], ids[k:]
        started = time.perf_counter()
        passages = [format_document(data.corpus[d]) for d in head]
        if window_chars:
            words = set(jieba_tokens(data.queries[qid]))  # BM25's words: evaluate's BM25 uses jieba's own dictionary
            passages = [matched_window(words, p, window_chars) for p in passages]
        logits = scorer.score(data.queries[qid], passages, raw=True)
        seconds.append(time.perf_counter() - started)
        first_scores = np.array([ranked[d] for d in head], dtype=np.float64)
        # Reranked documents score above every tail document: their ranks shifted above the tail's rank scores.
        base = float(len(tail)) + 1.0
        tail_run = {doc: float(len(tail) - rank) for rank, doc in enumerate(tail)}
        for alpha in alphas:
            order = np.argsort(-interpolated(logits, first_scores, alpha), kind="stable")
            run = {head[i]: base + float(len(head) - rank) for rank, i in enumerate(order)}
            run.update(tail_run)
            runs[alpha][qid] = run
    return runs, seconds


def rerank_run(scorer: CrossEncoderScorer, data: RetrievalEvalData, first_run: dict[str, dict[str, float]],
               k: int) -> tuple[dict[str, dict[str, float]], list[float]]:
    """``(run, seconds per query)``: each query's top ``k`` of ``first_run`` reordered by ``scorer`` alone."""
    runs, seconds = rerank_runs(scorer, data, first_run, k)
    return runs[1.0], seconds


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


def resolved_rerank_dtype(dtype: str) -> str:
    """``auto``: bf16 where the hardware runs it natively, else fp32; any other dtype as given."""
    from finbert2.precision import resolve_bf16

    if dtype == "auto":
        return "bf16" if resolve_bf16("auto").bf16 else "fp32"
    return dtype


def load_rerankers(names: list[str], dtype: str, max_length: int | None = None) -> dict[str, CrossEncoderScorer]:
    """Every reranker loaded before any work starts (a bad folder fails first), keyed by row suffix."""
    dtype = resolved_rerank_dtype(dtype)
    return {label: CrossEncoderScorer.from_pretrained(name, dtype=dtype, max_length=max_length)
            for name, label in reranker_labels(names).items()}


def interpolation_label(row: str, alpha: float) -> str:
    """``bm25+rerank@0.7``: the row of the reranker interpolated with its first stage at that alpha."""
    return row if alpha == 1.0 else f"{row}@{alpha:g}"


def rerank_rows(rerankers: dict[str, CrossEncoderScorer], data: RetrievalEvalData,
                first_runs: dict[str, dict[str, dict[str, float]]], k: int, interpolations: tuple[float, ...] = (),
                window_chars: int | None = None):
    """``(row label, run, seconds, latency summary)`` for every first stage reranked by every reranker, alone and
    interpolated with the first stage at each alpha of ``interpolations`` (scored once, ordered per alpha);
    ``window_chars``: passages scored by their ``matched_window``."""
    alphas = (1.0, *[a for a in interpolations if a != 1.0])
    for first, run in first_runs.items():
        for suffix, scorer in rerankers.items():
            started = time.perf_counter()
            runs, seconds = rerank_runs(scorer, data, run, k, alphas, window_chars)
            elapsed, latency = time.perf_counter() - started, latency_summary(seconds)
            for alpha in alphas:  # one scoring pass: its latency is the reranked row's, not repeated per alpha
                yield (interpolation_label(f"{first}+{suffix}", alpha), runs[alpha], elapsed,
                       latency if alpha == 1.0 else {})


def latency_table(flat: dict, k: int, rerankers: dict[str, CrossEncoderScorer] | None = None, dtype: str = "fp32",
                  window_chars: int | None = None) -> str:
    """The reranked rows' added milliseconds per query (mean, p95), from ``<label>_ms_per_query`` entries, under
    the settings they were measured at (each reranker's pair length, backend and precision; the window)."""
    from finbert2.serve.models import served_precision

    rows = [(key[: -len("_ms_per_query")], value) for key, value in flat.items()
            if key.endswith("_ms_per_query") and not key.endswith("_p95_ms_per_query")]
    settings = [f"`{suffix}`: pairs cut at {scorer.max_length} tokens, {' '.join(served_precision(scorer.model, dtype))}"
                for suffix, scorer in (rerankers or {}).items()]
    if window_chars:
        settings.append(f"passages longer than {window_chars} characters scored by their BM25-matched window")
    lines = ["", f"## Reranking latency (top {k}, ms per query)", "", *(f"- {line}" for line in settings),
             *([""] if settings else []), "| model | mean | p95 |", "|---|---:|---:|"]
    lines += [f"| {label} | {mean:.1f} | {flat[f'{label}_p95_ms_per_query']:.1f} |" for label, mean in rows]
    return "\n".join(lines) + "\n"
