"""Batch classification inference: finbert2's SequenceClassifier vs transformers.pipeline("text-classification").

    python benchmarks/classify_inference/run.py --size e5-small
    python benchmarks/classify_inference/run.py --size bert-base

Same model folder (``--size``: multilingual-e5-small as converted by finbert2 with a seeded random
3-label head, or a seeded random 12 x 768 BERT classifier over the 21,128-token bert-base-chinese
vocab; ``tiny`` for smoke tests), same tokenizer, same texts (CFBenchmark sentiment news from
../shared/data, else the demo corpus), same truncation (head, ``--max_length`` tokens: what the
pipeline's ``truncation=True`` does), one process. The pipeline is timed at each of
``--peer_batch_sizes`` and compared at its best one (also reported: its default batch 1). Ours runs at
``--batch_size`` inputs and, by default, at most 2048 padded tokens a forward pass
(``--max_batch_tokens``). Precisions: fp32, and bf16 where the CPU has native bf16 (ours ``bf16=True``, its
autocast; the pipeline under ``torch.autocast("cpu", dtype=torch.bfloat16)``, fp32 weights). Reports
texts/s, ratios ours / pipeline and whether the predicted labels are identical.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common


def load_texts(limit: int) -> tuple[list[str], str]:
    source = common.PUBLIC / "cfbenchmark-basic" / "data" / "sentiment.jsonl"
    if source.is_file():
        texts = [json.loads(line)["input"].strip() for line in source.read_text(encoding="utf-8").splitlines()]
        return texts[:limit], f"CFBenchmark sentiment news ($FINBERT2_PUBLIC_DATA/{source.relative_to(common.PUBLIC)})"
    return common.demo_documents()[:limit], "demo corpus"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser)
    parser.add_argument("--texts", type=int, default=593)
    parser.add_argument("--batch_size", type=int, default=32, help="ours: model inputs per forward pass")
    parser.add_argument("--max_batch_tokens", type=int, default=None,
                        help="ours: padded tokens per forward pass (default: the CPU default, 2048; 0: no bound)")
    parser.add_argument("--peer_batch_sizes", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; the fastest counts")
    parser.add_argument("--max_length", type=int, default=512)
    args = parser.parse_args()

    info = common.print_header()
    from transformers import pipeline

    from finbert2.classify.inference import SequenceClassifier
    from finbert2.retrieve.encoder import ClsOnlyLastLayer, batch_token_bound

    texts, source = load_texts(args.texts)
    work = common.work_dir("clsbench_")
    try:
        folder = common.model_folder(args.size, work, "classifier")
        ours = SequenceClassifier.from_pretrained(str(folder), max_length=args.max_length, truncation="head",
                                                  device="cpu")
        peer = pipeline("text-classification", model=str(folder), tokenizer=str(folder), device="cpu")
        peer_kwargs = {"truncation": True, "max_length": args.max_length}
        tokens = sum(min(len(ids) + 2, args.max_length) for ids in
                     ours.tokenizer(texts, add_special_tokens=False)["input_ids"])

        def run_peer(batch, precision):
            with common.autocast(precision):
                return [o["label"] for o in peer(texts, batch_size=batch, **peer_kwargs)]

        def run_ours(precision):
            ours.bf16 = precision == "bf16"
            return ours.predict(texts, args.batch_size, max_batch_tokens=args.max_batch_tokens).labels()

        rows, fp32_labels = [], None
        for precision in common.precisions(args.bf16):
            run_ours(precision)  # warm-up (allocator, oneDNN kernels), untimed
            with common.autocast(precision):
                peer(texts[:16], batch_size=16, **peer_kwargs)
            ours_s, ours_labels = common.timed(lambda p=precision: run_ours(p), args.repeats)
            sweep = {}
            for batch in args.peer_batch_sizes:
                seconds, labels = common.timed(lambda b=batch, p=precision: run_peer(b, p),
                                               1 if batch == 1 else args.repeats)
                sweep[batch] = {"texts_per_second": len(texts) / seconds, "identical_labels": labels == ours_labels}
                print(precision, "pipeline batch", batch, sweep[batch], flush=True)
            best = max(sweep, key=lambda b: sweep[b]["texts_per_second"])
            if precision == "fp32":
                fp32_labels = ours_labels
            row = {
                "precision": precision, "ours_texts_per_second": len(texts) / ours_s,
                "pipeline_by_batch_size": sweep, "pipeline_best_batch_size": best,
                "ratio_vs_pipeline_best": len(texts) / ours_s / sweep[best]["texts_per_second"],
                "identical_labels_at_best": sweep[best]["identical_labels"],
                "identical_labels_all_batch_sizes": all(v["identical_labels"] for v in sweep.values()),
                # a random head may put every text in one class, which would make "identical" trivial
                "ours_label_counts": dict(Counter(ours_labels)),
                "ours_label_agreement_with_ours_fp32": None if fp32_labels is None else
                sum(a == b for a, b in zip(ours_labels, fp32_labels)) / len(texts),
            }
            if 1 in sweep:
                row["ratio_vs_pipeline_batch1"] = len(texts) / ours_s / sweep[1]["texts_per_second"]
            rows.append(row)
        record = {"benchmark": "classify_inference", "machine": info, "size": args.size,
                  "model": common.size_description(args.size) + ", seeded random 3-label head",
                  "texts": len(texts), "source": source, "tokens_after_truncation": tokens,
                  "max_length": args.max_length, "ours_batch_size": args.batch_size,
                  "ours_max_batch_tokens": batch_token_bound(args.max_batch_tokens, ours.device),
                  "ours_last_layer_at_cls_only": isinstance(ours.model.base_model.encoder.layer[-1], ClsOnlyLastLayer),
                  "peer_bf16": "pipeline under torch.autocast('cpu', dtype=torch.bfloat16), fp32 weights",
                  "rows": rows}
        common.write_record(args.output, record)
        print(f"\n| size | precision | ours texts/s (batch {args.batch_size}) | pipeline best texts/s (batch) | "
              "ours / pipeline best | ours / pipeline batch 1 | identical labels |\n|---|---|---:|---:|---:|---:|---|")
        for r in rows:
            best = r["pipeline_best_batch_size"]
            print(f"| {args.size} | {r['precision']} | {r['ours_texts_per_second']:.1f} | "
                  f"{r['pipeline_by_batch_size'][best]['texts_per_second']:.1f} ({best}) | "
                  f"**{r['ratio_vs_pipeline_best']:.2f}x** | {r.get('ratio_vs_pipeline_batch1', float('nan')):.2f}x | "
                  f"{'yes' if r['identical_labels_all_batch_sizes'] else 'no'} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
