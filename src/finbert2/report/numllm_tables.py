"""The NumLLM reproduction's tables (``scripts/reproduce_numllm.sh``), built from its run folders.

    python -m finbert2.report.numllm_tables OUT [--output OUT/tables.md] [--into docs/RESULTS.md]

Reads ``OUT/{domain,numeric,merged}/metrics.json`` and ``OUT/eval*/results.json`` and writes the
budget per stage, one headline table per scoring protocol (every model on every test file, numeric
and non-numeric split, held-out perplexity, with the chance row, the no-model rules, each model's
most frequent answer and the sampling error of the question count) and the training table. ``--into`` replaces the part of a
markdown file between ``<!-- numllm-tables:begin -->`` and ``<!-- numllm-tables:end -->``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from finbert2.cli import run_main
from finbert2.data.writers import atomic_write_text
from finbert2.errors import DataError
from finbert2.report.reproduction import _metrics, _number, _table, budget_table, splice_tables

EVALUATIONS = {"eval": "letter scoring", "eval_option": "option log-likelihood per token (option_mean)"}
BLOCKS = {"val": "FinEval val", "single": "CFLUE single-choice", "heldout": "held-out NumCT items"}
MODULES = ("domain", "numeric")
BEGIN, END = "<!-- numllm-tables:begin -->", "<!-- numllm-tables:end -->"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def accuracy_rows(record: dict) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """An evaluation's ``results.json`` as table parts, 0-shot (else its first shot count): the header and
    one row per model, chance and no-model rule (accuracy %, numeric / non-numeric where a block has both,
    held-out perplexity); a note per block (question counts, the standard error at 25%); and each model's
    most frequent answer (a model answering one letter whatever the question shows there)."""
    results = record["results"]
    blocks = [b for b in BLOCKS if b in results] + [b for b in results if b not in BLOCKS]
    shots = {b: "0" if "0" in results[b] else next(iter(results[b])) for b in blocks}
    header, counts, split = ["model"], [], {}
    for block in blocks:
        first = next(iter(results[block][shots[block]].values()))
        name = BLOCKS.get(block, block)
        split[block] = first["numeric_n"] > 0 and first["non_numeric_n"] > 0  # else the split repeats the total
        header += [f"{name} %", "numeric %", "non-numeric %"] if split[block] else [f"{name} %"]
        # the binomial standard error at 25% for this many questions: what one row can tell from another
        counts.append(f"{name}: {first['n']} questions ({first['numeric_n']} numeric, {first['non_numeric_n']} "
                      f"non-numeric; standard error at 25%: {100 * math.sqrt(0.25 * 0.75 / max(first['n'], 1)):.1f} points)")
    perplexity = record.get("perplexity") or {}
    if perplexity:
        header.append("held-out perplexity")
    names = list(results[blocks[0]][shots[blocks[0]]])
    rows = []
    for name in names:
        cells = [name]
        for block in blocks:
            summary = results[block][shots[block]][name]
            cells.append(_pct(summary["accuracy"]))
            if split[block]:
                cells += [_pct(summary["numeric_accuracy"]), _pct(summary["non_numeric_accuracy"])]
        if perplexity:
            cells.append(_number(perplexity.get(name), 2) if name in perplexity else "–")
        rows.append(cells)
    top = [[name, *(f"{_pct(results[b][shots[b]][name]['top_letter_share'])} ({results[b][shots[b]][name]['top_letter']})"
                    for b in blocks)]
           for name in names if all(results[b][shots[b]][name].get("top_letter") for b in blocks)]
    return header, rows, counts, [["model", *(BLOCKS.get(b, b) for b in blocks)], *top] if top else []


def accuracy_table(record: dict) -> list[str]:
    """Every row (models, chance, the no-model rules) on every test block, 0-shot."""
    header, rows, counts, top = accuracy_rows(record)
    lines = [*_table(header, rows), *(f"- {line}" for line in counts), ""]
    if top:
        lines += ["Most frequent answer, % of the questions (letter):", "", *_table(top[0], top[1:])]
    return lines


def training_table(out: Path) -> list[str]:
    rows = []
    for module in MODULES:
        metrics = _metrics(out / module)
        if metrics:
            rows.append([module, str(metrics.get("global_step")), _number(metrics.get("train_runtime"), 0),
                         _number(metrics.get("initial_eval_loss")), _number(metrics.get("eval_loss")),
                         str(metrics.get("eval_sequences", "–"))])
    merged = _metrics(out / "merged")
    lines = []
    if rows:
        lines += ["## Training (held-out loss before and after, per target token)", "",
                  *_table(["module", "steps", "seconds", "held-out loss before", "after", "held-out rows"], rows)]
    if merged:
        lines += [f"Merge: {merged.get('combination_type')} of {len(merged.get('adapters', []))} adapters, weights "
                  f"{merged.get('weights')}; largest probe-logit difference between the merged folder and the fused "
                  f"adapter {merged.get('merge_max_logit_difference', float('nan')):.2e}.", ""]
    return lines


def build_tables(out: Path) -> str:
    lines = ["# NumLLM reproduction tables", "",
             f"Built from the run folders under `{out.name}/` by `python -m finbert2.report.numllm_tables`.", "",
             *budget_table(out)]
    for folder, protocol in EVALUATIONS.items():
        record = _metrics(out / folder, "results.json")
        if record:
            lines += [f"## Accuracy, 0-shot, {protocol}", "", *accuracy_table(record)]
    lines += training_table(out)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def run(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(prog="python -m finbert2.report.numllm_tables",
                                         description=__doc__.split("\n")[0])
        parser.add_argument("out", type=Path)
        parser.add_argument("--output", type=Path, default=None, help="default: OUT/tables.md")
        parser.add_argument("--into", type=Path, default=None,
                            help=f"also replace the part of this markdown file between {BEGIN} and {END}")
        args = parser.parse_args(argv)
        if not args.out.is_dir():
            raise DataError(args.out, None, "no such folder")
        if not any((args.out / folder / "results.json").is_file() for folder in EVALUATIONS):
            raise DataError(args.out, None, "no finished evaluation (eval/results.json)")
        text = build_tables(args.out)
        atomic_write_text(args.output or args.out / "tables.md", text)
        if args.into:
            splice_tables(args.into, text, BEGIN, END)
        print(text)
        return 0

    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
