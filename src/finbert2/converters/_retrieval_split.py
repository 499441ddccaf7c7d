"""What the retrieval converters (Fin-Eva, CFBenchmark summaries) share: their command line and
the layout they write (``train.jsonl`` + an evaluation folder + ``conversion.json``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from finbert2.cli import run_main
from finbert2.data import write_json, write_jsonl
from finbert2.data.splits import held_out_count
from finbert2.errors import ConfigError


def partition_groups(order: list, test_fraction: float, validation_fraction: float, source,
                     what: str) -> tuple[set, set]:
    """Test and validation groups from a seeded ``order``: test first (so adding a validation split
    leaves the test split as it was), validation from the rest; each side non-empty, training too."""
    test = set(order[: held_out_count(len(order), test_fraction, source, what)])
    rest = [g for g in order if g not in test]
    if validation_fraction <= 0:
        return test, set()
    n_val = held_out_count(len(rest), validation_fraction * len(order) / len(rest), source, what)
    return test, set(rest[:n_val])


def write_eval_folder(folder: Path, corpus: list[dict], queries: list[dict], qrels: list[dict]) -> None:
    """The layout ``finbert2 retrieve evaluate`` (and ``--eval_data`` in training) reads."""
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "test_queries.jsonl", queries)
    write_jsonl(folder / "test_qrels.jsonl", qrels)


def write_retrieval_split(output_dir: Path, train_rows: list[dict], corpus: list[dict], queries: list[dict],
                          qrels: list[dict], conversion: dict, validation: tuple[list, list, list] | None = None) -> None:
    """Training triples, the ``eval/`` folder, an optional ``validation/`` folder (its corpus holds no
    test passage, so model selection never sees the test split) and a record."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(output_dir / "train.jsonl", train_rows)
    write_eval_folder(output_dir / "eval", corpus, queries, qrels)
    if validation is not None:
        write_eval_folder(output_dir / "validation", *validation)
    write_json(output_dir / "conversion.json", conversion)


def run_retrieval_converter(argv: list[str] | None, prog: str, description: str, input_default: str,
                            input_help: str, test_fraction_help: str,
                            convert: Callable[..., dict[str, int]], extra_options: dict[str, dict] | None = None) -> int:
    """Parse, convert, print the counts; bad input is one ``error: path:line: reason`` line and exit 2.
    ``extra_options`` (flag name -> ``add_argument`` keywords) are a converter's own flags, passed to ``convert``
    by name."""

    def parse_and_convert(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(prog=prog, description=description)
        parser.add_argument("--input_dir", default=input_default, help=input_help)
        parser.add_argument("--output_dir", required=True, help="Where train.jsonl and eval/ go.")
        parser.add_argument("--test_fraction", type=float, default=0.3, help=test_fraction_help)
        parser.add_argument("--validation_fraction", type=float, default=0.0,
                            help="Share of all groups held out (from the non-test ones) into validation/ for "
                                 "choosing settings; its passages are neither positives nor negatives in train.jsonl.")
        parser.add_argument("--negatives", type=int, default=7, help="Random negatives per training row.")
        parser.add_argument("--seed", type=int, default=42)
        for name, options in (extra_options or {}).items():
            parser.add_argument(f"--{name}", **options)
        args = parser.parse_args(argv)
        if not 0 < args.test_fraction < 1:
            raise ConfigError("--test_fraction must be in (0, 1)")
        if not 0 <= args.validation_fraction < 1 - args.test_fraction:
            raise ConfigError("--validation_fraction must be in [0, 1 - test_fraction)")
        counts = convert(Path(args.input_dir), Path(args.output_dir), args.test_fraction, args.negatives, args.seed,
                         validation_fraction=args.validation_fraction,
                         **{name: getattr(args, name) for name in extra_options or {}})
        print(" ".join(f"{k}={v}" for k, v in counts.items()))
        return 0

    return run_main(parse_and_convert, argv)
