"""Evaluate dense models and BM25 on a FlagEmbedding-style folder (corpus / queries / qrels).

    finbert2 retrieve evaluate --eval_data data/demo/retrieval/eval \\
        --models bm25 runs/retromae runs/retriever --output_dir runs/retrieval_eval

Writes ``results.md`` (one markdown table, one row per model and a ``chance`` row: a seeded random
ranking), ``per_query/<label>.jsonl`` (every
query's metrics and top-10 ids), ``metrics.json`` (``<label>_<metric>`` for every model, and the
first model's metrics without prefix), ``run_config.json`` and ``run.log``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from finbert2.data import RetrievalEvalData, atomic_write_text, read_retrieval_eval, write_jsonl
from finbert2.errors import ConfigError
from finbert2.retrieve.encoder import DenseEncoder
from finbert2.retrieve.metrics import markdown_table, mean_metrics, per_query_metrics, top_k
from finbert2.retrieve.search import BM25Retriever, dense_run, format_document, fuse_runs
from finbert2.precision import command_bf16

logger = logging.getLogger("finbert2.retrieve")

BM25 = "bm25"


def dense_evaluation(encoder: DenseEncoder, data: RetrievalEvalData, k: int = 100,
                     show_progress: bool = False) -> tuple[dict[str, float], dict[str, dict[str, float]], dict]:
    """``(mean metrics, per-query metrics, run)`` of ``encoder`` on ``data``."""
    doc_ids = list(data.corpus)
    query_ids = [q for q in data.queries if q in data.qrels]
    doc_vectors = encoder.encode_passages([format_document(data.corpus[d]) for d in doc_ids],
                                          show_progress=show_progress)
    query_vectors = encoder.encode_queries([data.queries[q] for q in query_ids])
    run = dense_run(query_vectors, query_ids, doc_vectors, doc_ids, k)
    per_query = per_query_metrics(data.qrels, run)
    return mean_metrics(per_query), per_query, run


def bm25_evaluation(data: RetrievalEvalData, k: int = 100) -> tuple[dict[str, float], dict, dict]:
    doc_ids = list(data.corpus)
    query_ids = [q for q in data.queries if q in data.qrels]
    retriever = BM25Retriever(doc_ids, [format_document(data.corpus[d]) for d in doc_ids])
    run = retriever.run(query_ids, [data.queries[q] for q in query_ids], k)
    per_query = per_query_metrics(data.qrels, run)
    return mean_metrics(per_query), per_query, run


CHANCE = "chance"


def chance_evaluation(data: RetrievalEvalData, k: int = 100, seed: int = 0) -> tuple[dict[str, float], dict, dict]:
    """A seeded random ranking of the corpus for every query: the row every score is read against."""
    import random

    doc_ids = list(data.corpus)
    rng = random.Random(seed)
    run = {}
    for qid in (q for q in data.queries if q in data.qrels):
        ranked = rng.sample(doc_ids, min(k, len(doc_ids)))
        run[qid] = {doc: float(len(ranked) - rank) for rank, doc in enumerate(ranked)}
    per_query = per_query_metrics(data.qrels, run)
    return mean_metrics(per_query), per_query, run


def encoder_fingerprint(encoder: DenseEncoder) -> str:
    """Equal for two encoders that embed every text alike: weights, tokenizer, pooling, prompts and lengths."""
    from finbert2.modeling import weights_digest

    tokenizer = encoder.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    settings = (encoder.pooling, encoder.normalize, encoder.query_instruction, encoder.passage_instruction,
                encoder.max_length, encoder.query_max_length, encoder.bf16, vocabulary)
    return weights_digest(encoder.model, salt=repr(settings))


def model_label(name: str, taken: set[str]) -> str:
    """A short unique label for a model: ``bm25``, the folder name, or the hub id's last part."""
    base = BM25 if name == BM25 else re.sub(r"[^\w.-]+", "_", Path(name.rstrip("/")).name) or "model"
    label, n = base, 2
    while label in taken:
        label, n = f"{base}_{n}", n + 1
    return label


def write_per_query(path: Path, per_query: dict[str, dict[str, float]], run: dict[str, dict[str, float]],
                    qrels: dict[str, dict[str, int]]) -> None:
    ranked = top_k(run, 10)
    write_jsonl(path, ({"qid": qid, **metrics, "relevant": sorted(qrels.get(qid, {})),
                        "top10": list(ranked.get(qid, {}))} for qid, metrics in per_query.items()))


def per_source_ndcg(per_query: dict[str, dict[str, float]], query_sources: dict[str, str]) -> dict[str, float]:
    """Mean nDCG@10 over the judged queries of each source (queries without one count as ``(none)``)."""
    grouped: dict[str, list[float]] = {}
    for qid, values in per_query.items():
        grouped.setdefault(query_sources.get(qid, "(none)"), []).append(values["ndcg_at_10"])
    return {source: sum(v) / len(v) for source, v in sorted(grouped.items())}


def per_source_table(by_source: dict[str, dict[str, float]], data: RetrievalEvalData) -> str:
    """nDCG@10 with one column per query source, or nothing when the queries name no source."""
    if not by_source:
        return ""
    sources = sorted({s for row in by_source.values() for s in row})
    counts = {s: sum(1 for q in data.qrels if data.query_sources.get(q, "(none)") == s) for s in sources}
    lines = ["", "## nDCG@10 per query source", "",
             "| model | " + " | ".join(f"{s} ({counts[s]})" for s in sources) + " |",
             "|---|" + "---:|" * len(sources)]
    for label, row in by_source.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[s]:.4f}" if s in row else "" for s in sources) + " |")
    return "\n".join(lines) + "\n"


def hybrid_label(label: str) -> str:
    """The row of a dense model's run fused with BM25's."""
    return f"{label}+bm25"


def run_evaluation(args, run_args) -> dict[str, Any]:
    from finbert2.run import prepare_output_dir, setup_logging, write_metrics, write_run_config

    started = time.perf_counter()
    data = read_retrieval_eval(args.eval_data, args.split)  # validate before any work
    labels = list(args.labels or [])
    for name in args.models[len(labels):]:
        labels.append(model_label(name, set(labels)))
    encoders = {}
    bf16 = command_bf16(args)
    for name in args.models:  # load every model first: a bad name fails before output_dir is touched
        if name != BM25:
            encoders[name] = DenseEncoder.from_pretrained(
                name, query_instruction=args.query_instruction, passage_instruction=args.passage_instruction,
                max_length=args.max_length,
                batch_size=args.batch_size, bf16=bf16, pooling=args.pooling)
    rerankers = {}
    if args.rerank:
        from finbert2.rerank.evaluate import latency_table, load_rerankers, rerank_rows, resolved_rerank_dtype

        rerankers = load_rerankers(args.rerank, args.rerank_dtype, args.rerank_max_length)
        first_stages = labels + ([hybrid_label(label) for name, label in zip(args.models, labels) if name != BM25]
                                 if args.hybrid else [])
        unknown = sorted(set(args.rerank_first_stages or []) - set(first_stages))
        if unknown:
            raise ConfigError(f"retrieve evaluate: rerank_first_stages {', '.join(unknown)} name no first stage "
                              f"(the rows are: {', '.join(first_stages)})")

    output_dir = prepare_output_dir(args.output_dir, overwrite=run_args.overwrite_output_dir)
    setup_logging(output_dir)
    write_run_config(output_dir, args, run_args, stage="retrieve evaluate")
    logger.info("evaluating %d model(s) on %s: %d documents, %d judged queries", len(args.models),
                args.eval_data, len(data.corpus), len(data.qrels))

    for name, encoder in encoders.items():
        logger.info("%s: pooling %s, query prompt %r, passage prompt %r", name, encoder.pooling,
                    encoder.query_instruction, encoder.passage_instruction)
    results: dict[str, dict[str, float]] = {}
    by_source: dict[str, dict[str, float]] = {}  # label -> {source: nDCG@10}
    flat: dict[str, Any] = {}
    first_runs: dict[str, dict] = {}  # label -> run, the first stages a reranker reorders

    def record(label: str, mean: dict, per_query: dict, run: dict, seconds: float) -> None:
        results[label] = mean
        if data.query_sources:
            by_source[label] = per_source_ndcg(per_query, data.query_sources)
        write_per_query(output_dir / "per_query" / f"{label}.jsonl", per_query, run, data.qrels)
        logger.info("%s: %s (%.1fs)", label, json.dumps({k: round(v, 4) for k, v in mean.items()}), seconds)
        flat.update({f"{label}_{k}": v for k, v in mean.items()})
        flat[f"{label}_seconds"] = seconds
        first_runs[label] = run

    bm25_run, dense_runs = None, {}
    scored: dict[str, tuple[str, tuple]] = {}  # encoder fingerprint -> (label, its results)
    for name, label in zip(args.models, labels):
        t0 = time.perf_counter()
        if name == BM25:
            mean, per_query, run = bm25_evaluation(data, args.k)
            bm25_run = run
        else:
            # two folders holding the same encoder (a merge that chose alpha 1, a copy) are scored once
            fingerprint = encoder_fingerprint(encoders[name])
            if fingerprint in scored:
                same, (mean, per_query, run) = scored[fingerprint]
                logger.info("%s: the same weights, tokenizer and settings as %s; its scores reused", label, same)
            else:
                mean, per_query, run = dense_evaluation(encoders[name], data, args.k, show_progress=True)
                scored[fingerprint] = (label, (mean, per_query, run))
            dense_runs[label] = run
        record(label, mean, per_query, run, time.perf_counter() - t0)
    if args.hybrid:
        if bm25_run is None:
            bm25_run = bm25_evaluation(data, args.k)[2]
        for label, dense_run_of_label in dense_runs.items():
            t0 = time.perf_counter()
            fused = fuse_runs([dense_run_of_label, bm25_run], args.rrf_k)
            per_query = per_query_metrics(data.qrels, top_k(fused, args.k))
            record(hybrid_label(label), mean_metrics(per_query), per_query, fused, time.perf_counter() - t0)
    if rerankers:
        chosen = {label: run for label, run in first_runs.items()
                  if not args.rerank_first_stages or label in args.rerank_first_stages}
        for label, run, seconds, latency in rerank_rows(rerankers, data, chosen, args.rerank_top_k,
                                                        tuple(args.rerank_interpolation or ()),
                                                        args.rerank_window_chars):
            per_query = per_query_metrics(data.qrels, run)
            record(label, mean_metrics(per_query), per_query, run, seconds)
            flat.update({f"{label}_{k}": v for k, v in latency.items()})
    mean, per_query, run = chance_evaluation(data, args.k)  # always last: what no model beats is no result
    results[CHANCE] = mean
    if data.query_sources:
        by_source[CHANCE] = per_source_ndcg(per_query, data.query_sources)
    flat.update({f"{CHANCE}_{k}": v for k, v in mean.items()})
    table = markdown_table(results)
    atomic_write_text(output_dir / "results.md",
                      f"# Retrieval evaluation on `{args.eval_data}` ({len(data.qrels)} queries, "
                      f"{len(data.corpus)} documents)\n\n{table}" + per_source_table(by_source, data)
                      + (latency_table(flat, args.rerank_top_k, rerankers, resolved_rerank_dtype(args.rerank_dtype),
                                       args.rerank_window_chars) if rerankers else ""))
    print(table)
    metrics = {**results[labels[0]], **flat, "num_queries": len(data.qrels), "num_documents": len(data.corpus),
               "eval_seconds": time.perf_counter() - started}
    if by_source:
        metrics["ndcg_at_10_by_source"] = by_source
    return write_metrics(output_dir, metrics)
