"""What the retrieval converters (Fin-Eva, CFBenchmark summaries) share: their command line and
the layout they write (``train.jsonl`` + an evaluation folder + ``conversion.json``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from finbert2.cli import run_main
from finbert2.data import write_json, write_jsonl
from finbert2.errors import ConfigError


def write_retrieval_split(output_dir: Path, train_rows: list[dict], corpus: list[dict], queries: list[dict],
                          qrels: list[dict], conversion: dict) -> None:
    """Training triples, the ``eval/`` folder ``finbert2 retrieve evaluate`` reads, and a record."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(output_dir / "train.jsonl", train_rows)
    write_jsonl(output_dir / "eval" / "corpus.jsonl", corpus)
    write_jsonl(output_dir / "eval" / "test_queries.jsonl", queries)
    write_jsonl(output_dir / "eval" / "test_qrels.jsonl", qrels)
    write_json(output_dir / "conversion.json", conversion)


def run_retrieval_converter(argv: list[str] | None, prog: str, description: str, input_default: str,
                            input_help: str, test_fraction_help: str,
                            convert: Callable[[Path, Path, float, int, int], dict[str, int]]) -> int:
    """Parse, convert, print the counts; bad input is one ``error: path:line: reason`` line and exit 2."""

    def parse_and_convert(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(prog=prog, description=description)
        parser.add_argument("--input_dir", default=input_default, help=input_help)
        parser.add_argument("--output_dir", required=True, help="Where train.jsonl and eval/ go.")
        parser.add_argument("--test_fraction", type=float, default=0.3, help=test_fraction_help)
        parser.add_argument("--negatives", type=int, default=7, help="Random negatives per training row.")
        parser.add_argument("--seed", type=int, default=42)
        args = parser.parse_args(argv)
        if not 0 < args.test_fraction < 1:
            raise ConfigError("--test_fraction must be in (0, 1)")
        counts = convert(Path(args.input_dir), Path(args.output_dir), args.test_fraction, args.negatives, args.seed)
        print(" ".join(f"{k}={v}" for k, v in counts.items()))
        return 0

    return run_main(parse_and_convert, argv)
