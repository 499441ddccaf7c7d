"""CFBenchmark-Basic sentiment (instruction/input/response) to classification JSONL {text, label: 积极|中性|消极}.

    finbert2 convert cfbenchmark-sentiment $FINBERT2_PUBLIC_DATA/cfbenchmark-basic/data/sentiment.jsonl data/cfb_sentiment
    finbert2 convert cfbenchmark-sentiment IN out.jsonl --test_fraction 0

The text is the news ``input`` (whitespace runs collapsed); the instruction is dropped (it lists
the candidate labels, not content). A folder output gets a stratified ``train.jsonl``/``test.jsonl``
(and ``validation.jsonl`` with ``--validation_fraction``); ``classify train`` carves a stratified
validation split from train when none is given.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from finbert2.cli import run_main
from finbert2.data import iter_jsonl
from finbert2.data.readers import get_text
from finbert2.errors import DataError

SENTIMENT_LABELS = ("积极", "中性", "消极")
_WHITESPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Collapse whitespace runs (incl. full-width spaces and the many trailing blanks in CFBenchmark)."""
    return _WHITESPACE.sub(" ", text).strip()


def convert_rows(path: str | Path, label_of, allowed: tuple[str, ...] | None) -> list[dict]:
    """``{"text", "label"}`` rows from a CFBenchmark task file; ``label_of`` maps the response to a label."""
    rows = []
    for lineno, obj in iter_jsonl(path):
        text = clean_text(get_text(obj, "input", Path(path), lineno))
        if not text:
            raise DataError(path, lineno, "field 'input' is only whitespace")
        label = label_of(get_text(obj, "response", Path(path), lineno))
        if allowed is not None and label not in allowed:
            raise DataError(path, lineno, f"response '{label}' is not one of {', '.join(allowed)}")
        rows.append({"text": text, "label": label})
    return rows


def convert_sentiment(path: str | Path) -> list[dict]:
    return convert_rows(path, lambda response: response.strip(), SENTIMENT_LABELS)


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("input", help="the source file")
    parser.add_argument("output", help="a .jsonl file, or a folder for train/test(/validation) splits")
    parser.add_argument("--test_fraction", type=float, default=0.2, help="share of rows for test.jsonl (folder output)")
    parser.add_argument("--validation_fraction", type=float, default=0.0,
                        help="share of rows for validation.jsonl (folder output; default none: training carves one)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the stratified split")
    return parser


def write_output(rows: list[dict], args: argparse.Namespace) -> None:
    from finbert2.classify.data import write_labelled_output

    is_file = Path(args.output).suffix.lower() in {".jsonl", ".json"}
    counts = write_labelled_output(rows, args.output, 0.0 if is_file else args.test_fraction,
                                   0.0 if is_file else args.validation_fraction, args.seed)
    print(f"{args.input}: {len(rows)} rows -> {args.output} ("
          + ", ".join(f"{name} {n}" for name, n in counts.items()) + ")", file=sys.stderr)


def run_converter(argv: list[str] | None, prog: str, doc: str, convert, add_arguments=None) -> int:
    """Parse, convert, write; bad input is one ``error: path:line: reason`` line and exit 2 (``run_main``)."""
    def convert_and_write(argv: list[str]) -> int:
        parser = build_parser(prog, doc)
        if add_arguments is not None:
            add_arguments(parser)
        args = parser.parse_args(argv)
        write_output(convert(args), args)
        return 0

    return run_main(convert_and_write, argv)


def main(argv: list[str] | None = None) -> int:
    return run_converter(argv, "finbert2 convert cfbenchmark-sentiment", __doc__.splitlines()[0],
                         lambda args: convert_sentiment(args.input))


if __name__ == "__main__":
    sys.exit(main())
