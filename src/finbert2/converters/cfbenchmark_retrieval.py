"""CFBenchmark summary -> research-report pairs to retriever training triples and an evaluation folder.

    finbert2 convert cfbenchmark-retrieval --input_dir ../shared/data/cfbenchmark-basic --output_dir data/cfb-retrieval

CFBenchmark-Basic's ``summary`` task pairs a broker research report (``input``) with its summary
(``response``): the summary is the query, the report its positive. Reports are split (seeded) into
train and test so the two sides share no report; the evaluation corpus holds every report.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from finbert2.cli import run_main
from finbert2.data import iter_jsonl, write_json, write_jsonl
from finbert2.data.readers import get_text
from finbert2.data.splits import held_out_count
from finbert2.errors import DataError


def convert(input_dir: Path, output_dir: Path, test_fraction: float = 0.3, negatives: int = 7,
            seed: int = 42) -> dict[str, int]:
    path = input_dir / "data" / "summary.jsonl" if (input_dir / "data").is_dir() else input_dir / "summary.jsonl"
    pairs, skipped = [], 0
    for lineno, obj in iter_jsonl(path):
        if not isinstance(obj.get("response"), str) or not obj["response"].strip():
            skipped += 1  # a few rows have no gold summary
            continue
        pairs.append((obj["response"].strip(), get_text(obj, "input", path, lineno).strip()))
    if not pairs:
        raise DataError(path, None, "no rows")
    reports = sorted({report for _, report in pairs})
    report_ids = {report: f"report{i:04d}" for i, report in enumerate(reports)}
    rng = random.Random(seed)
    order = reports[:]
    rng.shuffle(order)
    test_reports = set(order[: held_out_count(len(order), test_fraction, path, "reports")])
    train_reports = [r for r in reports if r not in test_reports]

    train_rows, queries, qrels = [], [], []
    for summary, report in pairs:
        if report in test_reports:
            qid = f"q{len(queries):04d}"
            queries.append({"id": qid, "text": summary})
            qrels.append({"qid": qid, "docid": report_ids[report], "relevance": 1})
        else:
            pool = [r for r in train_reports if r != report]
            train_rows.append({"query": summary, "pos": [report], "neg": rng.sample(pool, min(negatives, len(pool)))})
    output_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(output_dir / "train.jsonl", train_rows)
    write_jsonl(output_dir / "eval" / "corpus.jsonl", [{"id": report_ids[r], "title": "", "text": r} for r in reports])
    write_jsonl(output_dir / "eval" / "test_queries.jsonl", queries)
    write_jsonl(output_dir / "eval" / "test_qrels.jsonl", qrels)
    counts = {"pairs": len(pairs), "skipped_without_summary": skipped, "reports": len(reports), "train_rows": len(train_rows),
              "test_queries": len(queries)}
    write_json(output_dir / "conversion.json", {"source": "CFBenchmark-Basic summary (non-commercial research)",
                                                "seed": seed, "test_fraction": test_fraction, **counts})
    return counts


def main(argv: list[str] | None = None) -> int:
    """Convert; a bad input file is one ``error: path:line: reason`` line and exit code 2 (``run_main``)."""
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="finbert2 convert cfbenchmark-retrieval", description=__doc__.splitlines()[0])
    parser.add_argument("--input_dir", default="../shared/data/cfbenchmark-basic", help="CFBenchmark-Basic folder.")
    parser.add_argument("--output_dir", required=True, help="Where train.jsonl and eval/ go.")
    parser.add_argument("--test_fraction", type=float, default=0.3)
    parser.add_argument("--negatives", type=int, default=7, help="Random negatives per training row.")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    counts = convert(Path(args.input_dir), Path(args.output_dir), args.test_fraction, args.negatives, args.seed)
    print(" ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
