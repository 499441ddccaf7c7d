"""The accuracy gate of an export: the exported model scored against the source model on a check set.

A retriever is checked on a retrieval evaluation folder (nDCG@10 of both, and the cosine between the two
models' vectors of every query and passage), a reranker on the same folder (nDCG@10 of BM25's top K
reordered by each, the share of queries whose top 10 is unchanged, the largest logit difference), a
classifier on a labelled file (macro-F1 of both, the share of identical predicted labels, the largest logit
difference). The export passes when the metric drops by
at most ``max_drop`` (absolute) and the agreement bounds hold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from finbert2.classify.data import label_targets
from finbert2.classify.inference import SequenceClassifier
from finbert2.classify.metrics import summary_metrics
from finbert2.data import read_classification, read_retrieval_eval
from finbert2.rerank.modeling import CrossEncoderScorer
from finbert2.retrieve.encoder import DenseEncoder
from finbert2.retrieve.metrics import mean_metrics, per_query_metrics
from finbert2.retrieve.search import dense_run, format_document


@dataclass
class Gate:
    max_drop: float = 0.01  # largest allowed drop of nDCG@10 / macro-F1, absolute
    min_cosine: float = 0.0  # smallest allowed cosine between source and exported vectors (retrievers)
    min_agreement: float = 0.0  # smallest allowed share of identical labels (classifiers)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def load_check_data(kind: str, path: str, split: str, text_field: str, label_field: str):
    """The check set, read (and validated) before any export work."""
    if kind in ("retriever", "reranker"):
        return read_retrieval_eval(path, split)
    return read_classification(path, text_field, label_field)


def check_retriever(source: DenseEncoder, exported: DenseEncoder, data) -> dict:
    doc_ids = list(data.corpus)
    query_ids = [q for q in data.queries if q in data.qrels]
    passages = [format_document(data.corpus[d]) for d in doc_ids]
    queries = [data.queries[q] for q in query_ids]
    scores, vectors = {}, {}
    for name, encoder in (("source", source), ("exported", exported)):
        doc_vectors, query_vectors = encoder.encode_passages(passages), encoder.encode_queries(queries)
        run = dense_run(query_vectors, query_ids, doc_vectors, doc_ids, 100)
        scores[name] = mean_metrics(per_query_metrics(data.qrels, run))["ndcg_at_10"]
        vectors[name] = np.concatenate([doc_vectors, query_vectors])
    cosines = row_cosines(vectors["source"], vectors["exported"])
    return {"metric": "ndcg_at_10", "source": scores["source"], "exported": scores["exported"],
            "drop": scores["source"] - scores["exported"], "min_cosine": float(cosines.min()),
            "mean_cosine": float(cosines.mean()), "queries": len(query_ids), "passages": len(doc_ids)}


def check_classifier(source: SequenceClassifier, exported: SequenceClassifier, data) -> dict:
    unknown = sorted(set(data.label_names()) - set(source.label_names))
    if unknown:
        from finbert2.errors import DataError

        raise DataError(data.path, None, f"labels {unknown} are not the model's ({source.label_names})")
    targets = label_targets(data, source.label_names)
    scores, predicted, logits = {}, {}, {}
    for name, classifier in (("source", source), ("exported", exported)):
        predictions = classifier.predict(data.texts)
        predicted[name], logits[name] = predictions.predicted(), predictions.logits
        scores[name] = summary_metrics(targets, predicted[name], len(source.label_names))["macro_f1"]
    same = predicted["source"] == predicted["exported"]
    agreement = same.all(axis=1) if same.ndim == 2 else same
    return {"metric": "macro_f1", "source": scores["source"], "exported": scores["exported"],
            "drop": scores["source"] - scores["exported"], "label_agreement": float(agreement.mean()),
            "max_abs_logit_difference": float(np.abs(logits["source"] - logits["exported"]).max()),
            "texts": len(data.texts)}


def check_reranker(source: CrossEncoderScorer, exported: CrossEncoderScorer, data, top_k: int = 20) -> dict:
    """Both rerankers reorder BM25's top ``top_k`` of every judged query (``retrieve evaluate --rerank``'s
    two-stage path, the reranker alone): nDCG@10 of each, the largest logit difference, and the share of
    queries whose reranked top 10 is the source's, in order (``label_agreement``, gated by ``--min_agreement``)."""
    from finbert2.retrieve.evaluate import bm25_evaluation

    _, _, first_run = bm25_evaluation(data, k=top_k)
    scores, runs, logits, seconds = {}, {}, {}, {}
    for name, scorer in (("source", source), ("exported", exported)):
        runs[name], logits[name] = {}, []
        started = time.perf_counter()
        for qid, ranked in tqdm(first_run.items(), desc=f"check: {name} reranks top {top_k}", unit="query",
                                mininterval=5):
            docs = list(ranked)
            query_logits = scorer.score(data.queries[qid], [format_document(data.corpus[d]) for d in docs], raw=True)
            runs[name][qid] = dict(zip(docs, query_logits.astype(float)))
            logits[name].extend(query_logits.tolist())
        seconds[name] = time.perf_counter() - started
        scores[name] = mean_metrics(per_query_metrics(data.qrels, runs[name]))["ndcg_at_10"]
    top10 = {name: {q: sorted(run[q], key=lambda d: -run[q][d])[:10] for q in run} for name, run in runs.items()}
    same = [top10["source"][q] == top10["exported"][q] for q in first_run]
    difference = np.abs(np.asarray(logits["source"]) - np.asarray(logits["exported"]))
    return {"metric": "ndcg_at_10", "source": scores["source"], "exported": scores["exported"],
            "drop": scores["source"] - scores["exported"], "label_agreement": float(np.mean(same)) if same else 1.0,
            "max_abs_logit_difference": float(difference.max()) if len(difference) else 0.0,
            "queries": len(same), "top_k": top_k,
            # what the export buys (one query at a time, as a service reranks; the source at fp32 on the CPU)
            "source_ms_per_query": 1000 * seconds["source"] / max(1, len(first_run)),
            "exported_ms_per_query": 1000 * seconds["exported"] / max(1, len(first_run))}


def gate_failures(result: dict, gate: Gate) -> list[str]:
    """What the check result breaks of the gate (empty: it passes)."""
    failures = []
    if result["drop"] > gate.max_drop:
        failures.append(f"{result['metric']} dropped {result['drop']:.4f} ({result['source']:.4f} -> "
                        f"{result['exported']:.4f}), more than --max_drop {gate.max_drop}")
    if "min_cosine" in result and result["min_cosine"] < gate.min_cosine:
        failures.append(f"min cosine to the source vectors {result['min_cosine']:.6f} < --min_cosine {gate.min_cosine}")
    if "label_agreement" in result and result["label_agreement"] < gate.min_agreement:
        what = "queries with the same reranked top 10" if "top_k" in result else "label agreement"
        failures.append(f"{what} {result['label_agreement']:.4f} < --min_agreement {gate.min_agreement}")
    return failures
