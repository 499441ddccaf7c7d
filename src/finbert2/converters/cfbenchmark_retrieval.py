"""CFBenchmark summary -> research-report pairs to retriever training triples and an evaluation folder.

    finbert2 convert cfbenchmark-retrieval --input_dir $FINBERT2_PUBLIC_DATA/cfbenchmark-basic --output_dir data/cfb-retrieval

CFBenchmark-Basic's ``summary`` task pairs a broker research report (``input``) with its summary
(``response``): the summary is the query, the report its positive. Reports are split (seeded) into
train and test so the two sides share no report; the evaluation corpus holds every report.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from finbert2.converters._retrieval_split import partition_groups, run_retrieval_converter, write_retrieval_split
from finbert2.data import iter_jsonl
from finbert2.data.readers import get_text
from finbert2.data.public import public_data_dir
from finbert2.errors import DataError


def convert(input_dir: Path, output_dir: Path, test_fraction: float = 0.3, negatives: int = 7,
            seed: int = 42, validation_fraction: float = 0.0) -> dict[str, int]:
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
    test_reports, validation_reports = partition_groups(order, test_fraction, validation_fraction, path, "reports")
    train_reports = [r for r in reports if r not in test_reports and r not in validation_reports]

    train_rows = []
    held_out = {"test": ([], []), "validation": ([], [])}
    for summary, report in pairs:
        split = "test" if report in test_reports else "validation" if report in validation_reports else None
        if split is None:
            pool = [r for r in train_reports if r != report]
            train_rows.append({"query": summary, "pos": [report], "neg": rng.sample(pool, min(negatives, len(pool)))})
            continue
        queries, qrels = held_out[split]
        qid = f"{'q' if split == 'test' else 'v'}{len(queries):04d}"
        queries.append({"id": qid, "text": summary})
        qrels.append({"qid": qid, "docid": report_ids[report], "relevance": 1})
    (queries, qrels), (val_queries, val_qrels) = held_out["test"], held_out["validation"]
    corpus = [{"id": report_ids[r], "title": "", "text": r} for r in reports]
    validation = None
    if validation_reports:
        validation = ([row for row, r in zip(corpus, reports) if r not in test_reports], val_queries, val_qrels)
    counts = {"pairs": len(pairs), "skipped_without_summary": skipped, "reports": len(reports), "train_rows": len(train_rows),
              "test_queries": len(queries)}
    if validation:
        counts.update(validation_queries=len(val_queries), validation_corpus=len(validation[0]))
    write_retrieval_split(output_dir, train_rows, corpus, queries, qrels,
                          {"source": "CFBenchmark-Basic summary (non-commercial research)", "seed": seed,
                           "test_fraction": test_fraction, "validation_fraction": validation_fraction, **counts},
                          validation=validation)
    return counts


def main(argv: list[str] | None = None) -> int:
    return run_retrieval_converter(argv, "finbert2 convert cfbenchmark-retrieval", __doc__.splitlines()[0],
                                   str(public_data_dir() / "cfbenchmark-basic"), "CFBenchmark-Basic folder.",
                                   "Share of reports held out for test.", convert)

if __name__ == "__main__":
    sys.exit(main())
