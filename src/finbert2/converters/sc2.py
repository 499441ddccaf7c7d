"""Upstream FinBERT2 SC_2 sentiment CSV (text,label with 0/1) to classification JSONL {text, label}.

    finbert2 convert sc2 $FINBERT2_PUBLIC_DATA/finbert2-upstream/Fin-labeler/SC_2/test_SC_2.csv data/sc2_test.jsonl

Labels stay the upstream integers (written as JSON numbers; the classifier reads them as the
labels "0" and "1"). Upstream ships train_SC_2.csv and test_SC_2.csv; convert each to a file and
pass them as train_data / test_data (validation is then carved from train).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finbert2.cli import run_main
from finbert2.data import iter_csv, write_jsonl
from finbert2.data.readers import get_text
from finbert2.errors import DataError

SC2_LABELS = ("0", "1")


def convert_sc2(path: str | Path) -> list[dict]:
    path = Path(path)
    rows = []
    for lineno, obj in iter_csv(path):
        if "text" not in obj or "label" not in obj:
            raise DataError(path, 1, f"expected columns text,label, found {','.join(obj)}")
        text = get_text(obj, "text", path, lineno).strip()
        label = obj["label"].strip()
        if label not in SC2_LABELS:
            raise DataError(path, lineno, f"label '{label}' is not 0 or 1")
        rows.append({"text": text, "label": int(label)})
    return rows


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="finbert2 convert sc2", description=__doc__.splitlines()[0])
    parser.add_argument("input", help="test_SC_2.csv or train_SC_2.csv")
    parser.add_argument("output", help="the .jsonl to write")
    args = parser.parse_args(argv)
    rows = convert_sc2(args.input)
    write_jsonl(args.output, rows)
    print(f"{args.input}: {len(rows)} rows -> {args.output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Convert; a bad input file is one ``error: path:line: reason`` line and exit code 2 (``run_main``)."""
    return run_main(_main, argv)

if __name__ == "__main__":
    sys.exit(main())
