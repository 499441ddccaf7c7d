"""JINGEWU Financial-Sentiment-Analysis headlines (data/CH.csv) to topic-model JSONL {"text"}.

    finbert2 convert jingewu $FINBERT2_PUBLIC_DATA/jingewu-financial-sentiment-analysis/data/CH.csv \
        --output_file runs/data/jingewu_titles.jsonl [--max_docs 3000 --seed 42]

CH.csv has an unnamed index column and ``Text, Close, Return, Label``; the label is a market
up/down signal of the day, not the headline's topic, and there are no dates, so only the text is
kept. Full-width spaces inside headlines are folded to one space; duplicate headlines are dropped.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

from finbert2.cli import run_main
from finbert2.data import iter_csv, write_jsonl
from finbert2.errors import DataError

TEXT_COLUMN = "Text"
_SPACES = re.compile(r"[\s\u3000]+")


def convert(path: str | Path, max_docs: int | None = None, seed: int = 42) -> list[dict[str, str]]:
    """The headlines of ``path`` as ``{"text"}`` rows, in file order (a seeded sample when ``max_docs``)."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for lineno, record in iter_csv(path):
        if TEXT_COLUMN not in record:
            raise DataError(path, 1, f"no '{TEXT_COLUMN}' column (is this JINGEWU data/CH.csv?)")
        text = _SPACES.sub(" ", record[TEXT_COLUMN]).strip()
        if not text:
            raise DataError(path, lineno, f"field '{TEXT_COLUMN}' is empty")
        if text not in seen:
            seen.add(text)
            rows.append({"text": text})
    if max_docs is not None and len(rows) > max_docs:
        keep = sorted(random.Random(seed).sample(range(len(rows)), max_docs))
        rows = [rows[i] for i in keep]
    return rows


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="finbert2 convert jingewu", description=__doc__.splitlines()[0])
    parser.add_argument("input_file", help="JINGEWU data/CH.csv")
    parser.add_argument("--output_file", required=True, help="JSONL to write ({'text'} per headline)")
    parser.add_argument("--max_docs", type=int, default=None, help="keep a seeded random sample of this many")
    parser.add_argument("--seed", type=int, default=42, help="seed of the sample")
    args = parser.parse_args(argv)
    rows = convert(args.input_file, args.max_docs, args.seed)
    write_jsonl(args.output_file, rows)
    print(f"{len(rows)} headlines -> {args.output_file}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Convert; a bad input file is one ``error: path:line: reason`` line and exit code 2 (``run_main``)."""
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
