"""The command line both question converters (FinEval, CFLUE) share: ``--input_dir --output_dir``, counts printed."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def question_converter_main(prog: str, doc: str, input_help: str,
                            convert: Callable[[Path, Path], dict], argv: list[str] | None) -> int:
    from finbert2.cli import run_main

    def _main(args_list: list[str]) -> int:
        parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
        parser.add_argument("--input_dir", required=True, help=input_help)
        parser.add_argument("--output_dir", required=True)
        args = parser.parse_args(args_list)
        print(json.dumps(convert(Path(args.input_dir), Path(args.output_dir)), ensure_ascii=False))
        return 0

    return run_main(_main, argv)
