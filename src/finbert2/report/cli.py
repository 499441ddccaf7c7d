"""``finbert2 report RUN_DIR... --output OUT``: report.md and a self-contained report.html."""

from __future__ import annotations

import argparse
import os

from finbert2.errors import ConfigError
from finbert2.report.builder import build_report, find_run_dirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finbert2 report", description=__doc__)
    parser.add_argument("run_dirs", nargs="+", help="run folders, or folders holding run folders")
    parser.add_argument("--output", required=True, help="folder for report.md, assets/ and report.html")
    parser.add_argument("--title", default="FinBERT2 report")
    args = parser.parse_args(argv)
    missing = [p for p in args.run_dirs if not os.path.isdir(p)]
    if missing:
        raise ConfigError(f"{missing[0]}: no such run folder")
    if not find_run_dirs(args.run_dirs):
        raise ConfigError(f"{args.run_dirs[0]}: holds no run folder (none has run_config.json or metrics.json)")
    summary = build_report(args.run_dirs, args.output, args.title)
    print(f"report: {summary['runs']} runs ({summary['finished_runs']} finished), {summary['images']} pictures "
          f"-> {args.output}/report.md, {args.output}/report.html")
    return 0
