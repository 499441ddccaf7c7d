"""Reranking latency: finbert2's CrossEncoderScorer vs sentence-transformers' CrossEncoder.predict.

    python benchmarks/rerank_latency/run.py --size e5-small --eval_data RUN/data/fineva/eval \\
        --model runs/reranker_e5 --queries 30 --top_k 20 50 100

Both score the same pairs of the same model folder (``--model``: a trained reranker; else ``--size``'s
encoder with a seeded random one-logit head, where the nDCG columns mean nothing) with the same
truncation (``--max_length``): each of ``--queries`` queries of ``--eval_data`` (a BEIR-style folder;
the demo evaluation folder by default) with BM25's top K passages, one query at a time as a service
reranks. Ours sorts the pairs by length and cuts them into token-budget batches; the peer runs
``CrossEncoder.predict(pairs, batch_size=32)`` (its default). Precisions: fp32, int8 (dynamic
quantisation of the linear layers, both sides) and bf16 where the CPU has native bf16 (autocast).
Reports mean and p95 milliseconds per query, ours / peer speed ratios and the nDCG@10 of BM25's
top K reranked at each precision (the accuracy cost of int8 and bf16 against fp32).

``--exported DIR ...`` adds a row per ``finbert2 export`` folder of the same reranker (ONNX Runtime or
OpenVINO, at the precision it was exported and checked at), timed by ours against the peer's fp32 row;
``--window_chars N`` scores every passage longer than N characters by its BM25-matched window (both sides,
``retrieve evaluate --rerank_window_chars``).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common


def reranker_folder(size: str, work: Path) -> Path:
    """``size``'s encoder with a seeded random one-logit head (latency only)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = common.model_folder(size, work, "encoder")
    folder = work / f"{size}-reranker"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(source, num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


class PeerScorer:
    """``CrossEncoder.predict`` behind ``CrossEncoderScorer.score``'s signature, so ``rerank_run`` times both."""

    def __init__(self, folder: Path, precision: str, max_length: int, batch_size: int):
        from sentence_transformers import CrossEncoder

        from finbert2.serve.models import quantize_linear_layers

        self.model = CrossEncoder(str(folder), device="cpu", max_length=max_length)
        if precision == "int8":
            self.model = quantize_linear_layers(self.model)  # the whole CrossEncoder module: its predict stays
        self.precision, self.batch_size = precision, batch_size

    def score(self, query: str, passages: list[str], raw: bool = False) -> np.ndarray:
        with common.autocast(self.precision):
            # its default activation (sigmoid) is monotone: the ranking is the logits' either way
            return np.asarray(self.model.predict([(query, p) for p in passages], batch_size=self.batch_size,
                                                 show_progress_bar=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser)
    parser.add_argument("--model", type=Path, default=None, help="a reranker folder (default: --size, random head)")
    parser.add_argument("--eval_data", type=Path, default=common.REPO / "data" / "demo" / "retrieval" / "eval")
    parser.add_argument("--queries", type=int, default=30, help="queries sampled (seed 0) from eval_data")
    parser.add_argument("--top_k", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--max_length", type=int, default=256, help="longest query + passage pair in tokens")
    parser.add_argument("--peer_batch_size", type=int, default=32)
    parser.add_argument("--exported", type=Path, nargs="*", default=[],
                        help="`finbert2 export` folders of --model: a row each, against the peer's fp32 latency")
    parser.add_argument("--window_chars", type=int, default=None,
                        help="score passages longer than this by their BM25-matched window (both sides)")
    parser.add_argument("--precisions", nargs="+", default=None,
                        help="torch precisions to time (default fp32, int8 and bf16 where native)")
    args = parser.parse_args()

    info = common.print_header()
    from finbert2.data import RetrievalEvalData, read_retrieval_eval
    from finbert2.rerank.evaluate import latency_summary, rerank_runs
    from finbert2.rerank.modeling import CrossEncoderScorer
    from finbert2.retrieve.evaluate import bm25_evaluation
    from finbert2.retrieve.metrics import evaluate_run

    full = read_retrieval_eval(str(args.eval_data), "test")
    picked = sorted(random.Random(0).sample(sorted(full.qrels), min(args.queries, len(full.qrels))))
    data = RetrievalEvalData(corpus=full.corpus, queries={q: full.queries[q] for q in picked},
                             qrels={q: full.qrels[q] for q in picked})
    first = bm25_evaluation(data, max(args.top_k))[2]
    work = common.work_dir("rerankbench_")
    try:
        folder = args.model or reranker_folder(args.size, work)
        precisions = args.precisions or ["fp32", "int8"] + [p for p in common.precisions(args.bf16) if p == "bf16"]
        if args.exported and "fp32" not in precisions:
            precisions = ["fp32", *precisions]  # the exported rows are read against the peer's fp32

        def timed(scorer, k):
            run, seconds = rerank_runs(scorer, data, first, k, window_chars=args.window_chars)
            return {**latency_summary(seconds), "ndcg_at_10": evaluate_run(data.qrels, run[1.0])["ndcg_at_10"]}

        rows, peer_fp32 = [], {}
        for precision in precisions:
            ours = CrossEncoderScorer.from_pretrained(str(folder), dtype=precision, max_length=args.max_length)
            peer = PeerScorer(folder, precision, args.max_length, args.peer_batch_size)
            for k in args.top_k:
                ours.score(data.queries[picked[0]], ["暖机"] * 4)  # warm-up (allocator, oneDNN kernels), untimed
                rows.append({"precision": precision, "top_k": k, "ours": timed(ours, k), "peer": timed(peer, k)})
                if precision == "fp32":
                    peer_fp32[k] = rows[-1]["peer"]
                print(rows[-1], flush=True)
        for exported in args.exported:
            ours = CrossEncoderScorer.from_pretrained(str(exported), max_length=args.max_length)
            report = json.loads((exported / "export_report.json").read_text(encoding="utf-8"))
            precision = f"{report['format']} {report['quantize']} ({report.get('inference_precision', 'f32')})"
            for k in args.top_k:
                ours.score(data.queries[picked[0]], ["暖机"] * 4)
                rows.append({"precision": precision, "top_k": k, "exported": str(exported), "ours": timed(ours, k),
                             "peer": peer_fp32[k]})
                print(rows[-1], flush=True)
        for row in rows:
            row["speed_ratio_mean"] = row["peer"]["ms_per_query"] / row["ours"]["ms_per_query"]
            row["speed_ratio_p95"] = row["peer"]["p95_ms_per_query"] / row["ours"]["p95_ms_per_query"]
        bm25_ndcg = evaluate_run(data.qrels, first)["ndcg_at_10"]
        record = {"benchmark": "rerank_latency", "machine": info, "model": str(folder) if args.model else
                  common.size_description(args.size) + ", seeded random one-logit head",
                  "eval_data": str(args.eval_data), "queries": len(picked), "max_length": args.max_length,
                  "window_chars": args.window_chars,
                  "peer": f"sentence_transformers.CrossEncoder.predict(batch_size={args.peer_batch_size})",
                  "bm25_ndcg_at_10": bm25_ndcg, "rows": rows}
        common.write_record(args.output, record)
        print(f"\nBM25 alone nDCG@10 on these {len(picked)} queries: {bm25_ndcg:.4f}\n")
        # exported rows: the peer column is CrossEncoder at fp32
        print("| top K | precision | ours mean / p95 ms | CrossEncoder mean / p95 ms | ours / peer speed (mean, p95) "
              "| nDCG@10 ours | nDCG@10 CrossEncoder |\n|---:|---|---:|---:|---:|---:|---:|")
        for r in rows:
            o, p = r["ours"], r["peer"]
            print(f"| {r['top_k']} | {r['precision']} | {o['ms_per_query']:.0f} / {o['p95_ms_per_query']:.0f} | "
                  f"{p['ms_per_query']:.0f} / {p['p95_ms_per_query']:.0f} | **{r['speed_ratio_mean']:.2f}x**, "
                  f"{r['speed_ratio_p95']:.2f}x | {o['ndcg_at_10']:.4f} | {p['ndcg_at_10']:.4f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
