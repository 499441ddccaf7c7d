"""A layer-pruned, distilled retriever (``finbert2 prune``) against its full source: speed and accuracy.

    finbert2 prune runs/e5-small runs/e5-small-6l --keep_layers 0,2,4,6,8,10 --train_data CORPUS \\
        --query_data FIN_EVA/train.jsonl --check FIN_EVA/validation
    PYTHONPATH=src python benchmarks/encode_throughput/pruned.py --full runs/e5-small --pruned runs/e5-small-6l \\
        --passages_file ../shared/data/cfbenchmark-basic/data/sentiment.jsonl --text_field input \\
        --eval_data FIN_EVA/eval --output benchmarks/encode_throughput/e5-small-pruned.json

Our ``DenseEncoder`` on both folders, in the same process, interleaved over ``--rounds`` (full, then each
pruned folder, in every precision: fp32, and bf16 autocast where the CPU has native bf16); the passages and
queries of ``backends.py`` (batch 32, the folders' prompts). Reported per row: median passages/s and
queries/s, the median of each round's ratio to the full model in the same precision, the min / mean cosine
of its passage vectors to the full model's (same precision), and nDCG@10 on ``--eval_data``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from backends import ndcg_at_10, round_summary, texts_for, time_encoder  # noqa: E402
from common import print_header, write_record  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", required=True, help="the source retriever folder")
    parser.add_argument("--pruned", required=True, nargs="+", help="pruned retriever folder(s)")
    parser.add_argument("--passages", type=int, default=256)
    parser.add_argument("--passages_file", type=Path, default=None, help="JSONL of passages (default: the demo pool)")
    parser.add_argument("--text_field", default="text")
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--single_queries", type=int, default=50, help="queries timed one at a time")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--eval_data", default=None, help="a retrieval folder: nDCG@10 of each row")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    info = print_header()

    from finbert2.precision import cpu_bf16_flags
    from finbert2.retrieve.encoder import DenseEncoder

    precisions = ["fp32", "bf16"] if cpu_bf16_flags() else ["fp32"]
    kwargs = {"max_length": args.max_length, "batch_size": args.batch_size, "device": "cpu"}
    folders = {"full": args.full} | {f"pruned {Path(p).name}": p for p in args.pruned}
    encoders = {(name, precision): DenseEncoder.from_pretrained(str(folder), bf16=precision == "bf16", **kwargs)
                for name, folder in folders.items() for precision in precisions}
    passages, queries = texts_for(args)
    for encoder in encoders.values():  # warm-up
        encoder.encode_passages(passages[:8])
    rounds = []
    for round_number in range(args.rounds):
        rounds.append({key: time_encoder(encoder.encode_passages, encoder.encode_queries, passages, queries,
                                         args.single_queries) for key, encoder in encoders.items()})
        print(f"round {round_number + 1}/{args.rounds} done", flush=True)

    quality = ndcg_at_10(encoders, args.eval_data)

    results = []
    print("\n| model | precision | layers | passages/s | x full | queries/s | x full | single query ms (p50) | "
          "min cosine to full | mean cosine | nDCG@10 |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (name, precision), encoder in encoders.items():
        per_round = [r[(name, precision)] for r in rounds]
        refs = [r[("full", precision)] for r in rounds]
        row = {"model": name, "folder": folders[name], "precision": precision,
               "layers": encoder.model.config.num_hidden_layers,
               **round_summary(per_round, refs, refs[-1]["vectors"], "x_full"), "ndcg_at_10": quality.get((name, precision))}
        results.append(row)
        ndcg = f"{row['ndcg_at_10']:.4f}" if row["ndcg_at_10"] is not None else ""
        print(f"| {name} | {precision} | {row['layers']} | {row['passages_per_second']:.1f} | {row['x_full']:.2f} | "
              f"{row['queries_per_second']:.1f} | {row['queries_x_full']:.2f} | {row['single_query_ms_p50']:.2f} | "
              f"{row['min_cosine']:.4f} | {row['mean_cosine']:.4f} | {ndcg} |", flush=True)
    write_record(args.output, {"machine": info, "settings": {k: str(v) for k, v in vars(args).items()},
                               "results": results})


if __name__ == "__main__":
    main()
