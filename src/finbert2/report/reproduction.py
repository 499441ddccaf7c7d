"""The mini reproduction's data step and its tables (``scripts/reproduce_mini.sh``).

    python -m finbert2.report.reproduction prepare-corpus DATA_DIR DATA_OUT [--seed 42]
    python -m finbert2.report.reproduction tables OUT [--output OUT/tables.md]

``prepare-corpus`` runs after the converters: it splits SC_2 (shipped as a 400-row test file only),
and writes the pretraining corpus with every text a later evaluation scores left out.
``tables`` reads the finished run folders under OUT and writes every table docs/RESULTS.md shows:
the budget per stage, classification (mean +- std over seeds where there are several), retrieval
pooled and per source, topics and pretraining, each with its baseline, untrained and chance rows.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from finbert2.data import iter_jsonl, write_json, write_jsonl
from finbert2.data.writers import atomic_write_text
from finbert2.cli import run_main
from finbert2.errors import DataError

ENCODERS = ("general", "finbert2-mini")
CLASSIFICATION_TASKS = {"cfb_sentiment": "CFBenchmark sentiment (3 classes)",
                        "cfb_event": "CFBenchmark event, level 1 (4 classes)", "sc2": "SC_2 (2 classes)"}
STAGE_TIMES_FILE = "stage_times.tsv"  # written by scripts/stage.sh: name <TAB> seconds


def _texts(path: Path, field: str = "text") -> list[str]:
    return [row[field] for _, row in iter_jsonl(path)]


def _key(text: str) -> str:
    """CFBenchmark repeats a text across its task files with different whitespace: compare without it."""
    return re.sub(r"\s+", "", text)


def prepare_corpus(data_dir: Path, out: Path, seed: int) -> dict[str, int]:
    from sklearn.model_selection import train_test_split

    rows = [row for _, row in iter_jsonl(out / "sc2_all.jsonl")]
    train, test = train_test_split(rows, test_size=0.25, stratify=[r["label"] for r in rows], random_state=seed)
    train, val = train_test_split(train, test_size=0.2, stratify=[r["label"] for r in train], random_state=seed)
    for name, part in (("train", train), ("validation", val), ("test", test)):
        write_jsonl(out / "sc2" / f"{name}.jsonl", part)
    # Text no evaluation may have seen in pretraining: every classification test text and the Fin-Eva
    # held-out contexts (the retrieval test documents with a relevant query).
    held_out = {_key(r["text"]) for r in test}
    for task in ("cfb_sentiment", "cfb_event"):
        held_out |= {_key(t) for t in _texts(out / task / "test.jsonl")}
    test_docs = {r["docid"] for _, r in iter_jsonl(out / "fineva" / "eval" / "test_qrels.jsonl")}
    contexts = [r for _, r in iter_jsonl(out / "fineva" / "eval" / "corpus.jsonl")]
    # by text too: two Fin-Eva contexts differ only in whitespace, one on each side of the split
    held_out |= {_key(r["text"]) for r in contexts if r["id"] in test_docs}
    fineva = [r["text"].strip() for r in contexts if r["id"] not in test_docs and _key(r["text"]) not in held_out]
    cfb_files = sorted((data_dir / "cfbenchmark-basic" / "data").glob("*.jsonl"))
    if not cfb_files:
        raise DataError(data_dir / "cfbenchmark-basic" / "data", None, "no CFBenchmark *.jsonl files")
    cfb = [t.strip() for path in cfb_files for t in _texts(path, "input")]
    headlines = [t.strip() for t in _texts(out / "jingewu.jsonl")]
    corpus = [t for t in dict.fromkeys(cfb + fineva + headlines) if t and _key(t) not in held_out]
    write_jsonl(out / "corpus.jsonl", ({"text": t} for t in corpus))
    counts = {"cfbenchmark_texts": len(set(cfb)), "fineva_train_contexts": len(fineva),
              "jingewu_headlines": len(headlines), "corpus_documents": len(corpus),
              "corpus_characters": sum(map(len, corpus)), "heldout_classification_texts": len(held_out),
              "heldout_fineva_contexts": len(test_docs),
              "sc2_train": len(train), "sc2_validation": len(val), "sc2_test": len(test)}
    write_json(out / "metrics.json", counts)
    return counts


# ---------------------------------------------------------------------------------------------
# tables


def _metrics(folder: Path, name: str = "metrics.json") -> dict[str, Any] | None:
    path = folder / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _number(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def mean_std(values: list[float], digits: int = 3) -> str:
    """``0.612 +- 0.013 (n=3)`` (sample std), or the one value when there is one."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} (n={len(values)})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def budget_table(out: Path) -> list[str]:
    path = out / STAGE_TIMES_FILE
    if not path.is_file():
        return []
    times: dict[str, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, _, seconds = line.rpartition("\t")
        if name:
            times[name] = float(seconds)  # a rerun of a stage replaces its time
    rows = [[name, f"{seconds:.0f}", f"{seconds / 60:.1f}"] for name, seconds in times.items()]
    total = sum(times.values())
    rows.append(["**total**", f"**{total:.0f}**", f"**{total / 60:.1f}**"])
    return ["## Budget per stage", "", *_table(["stage", "seconds", "minutes"], rows)]


def classification_tables(out: Path) -> list[str]:
    lines: list[str] = []
    for task, title in CLASSIFICATION_TASKS.items():
        folder = out / "classify" / task
        if not folder.is_dir():
            continue
        rows, majority = [], None
        for encoder in ENCODERS:
            runs = [m for m in (_metrics(p) for p in sorted(folder.glob(f"{encoder}_seed*"))) if m]
            if not runs:
                continue
            majority = majority or runs[0].get("test_majority_macro_f1")
            pick = lambda key: [m.get(key) for m in runs]  # noqa: E731
            rows.append([f"fine-tuned from {encoder}", mean_std(pick("eval_macro_f1")),
                         mean_std(pick("test_macro_f1")), mean_std(pick("test_accuracy"))])
            rows.append([f"{encoder}, untrained (fresh head)", mean_std(pick("initial_eval_macro_f1")), "–", "–"])
        baseline = _metrics(folder / "tfidf")
        if baseline:
            rows.append(["TF-IDF + logistic regression", _number(baseline.get("eval_macro_f1")),
                         _number(baseline.get("test_macro_f1")), _number(baseline.get("test_accuracy"))])
        rows.append(["chance: majority class", "–", _number(majority), "–"])
        lines += [f"### {title}", "", *_table(["model", "validation macro-F1", "test macro-F1", "test accuracy"], rows)]
    return ["## Classification", "", *lines] if lines else []


def retrieval_tables(out: Path) -> list[str]:
    evaluation = _metrics(out / "retrieve" / "evaluation")
    if not evaluation:
        return []
    labels = [k[:-len("_ndcg_at_10")] for k in evaluation if k.endswith("_ndcg_at_10")]
    rows = [[label, _number(evaluation.get(f"{label}_ndcg_at_10")), _number(evaluation.get(f"{label}_mrr_at_10")),
             _number(evaluation.get(f"{label}_recall_at_10")), _number(evaluation.get(f"{label}_recall_at_100"))]
            for label in labels]
    lines = ["## Retrieval (Fin-Eva held-out split)", "",
             f"{evaluation.get('num_queries')} test queries over {evaluation.get('num_documents')} contexts.", "",
             *_table(["model", "nDCG@10", "MRR@10", "recall@10", "recall@100"], rows)]
    by_source = evaluation.get("ndcg_at_10_by_source") or {}
    if by_source:
        sources = sorted({s for row in by_source.values() for s in row})
        rows = [[label, *(_number(row.get(s)) for s in sources)] for label, row in by_source.items()]
        lines += ["### nDCG@10 per source file", "", *_table(["model", *sources], rows)]
    trainings = []
    for encoder in ENCODERS:
        metrics = _metrics(out / "retrieve" / f"finetuned_{encoder}")
        mined = _metrics(out / "retrieve" / f"mined_{encoder}")
        if metrics:
            trainings.append([encoder, _number(metrics.get("train_loss")), _number(metrics.get("passage_mean_cosine")),
                              "yes" if metrics.get("collapsed") else "no",
                              json.dumps({k: v for k, v in (mined or {}).items()
                                          if k in ("queries", "negatives", "skipped_by_margin", "mean_negatives")},
                                         ensure_ascii=False)])
    if trainings:
        lines += ["### Fine-tuning runs", "",
                  *_table(["from", "train loss", "passage mean cosine", "collapsed", "mining"], trainings)]
    return lines


def topic_table(out: Path) -> list[str]:
    rows = []
    for name in (*ENCODERS, "tfidf"):
        m = _metrics(out / "topics" / name)
        if m:
            rows.append([name if name != "tfidf" else "TF-IDF / LSA", str(m.get("num_topics")),
                         _number(m.get("outlier_ratio")), _number(m.get("silhouette")), _number(m.get("npmi")),
                         _number(m.get("topic_diversity")), _number(m.get("largest_topic_share"))])
    if not rows:
        return []
    return ["## Topics (JINGEWU headlines)", "",
            *_table(["embeddings", "topics", "outlier share", "silhouette", "NPMI", "diversity", "largest topic"],
                    rows)]


def pretraining_table(out: Path) -> list[str]:
    rows = []
    for name, folder in (("whole-word MLM", out / "mlm"), ("RetroMAE", out / "finbert2-mini")):
        m = _metrics(folder)
        if m:
            rows.append([name, str(m.get("global_step")), _number(m.get("initial_eval_loss")), _number(m.get("eval_loss")),
                         _number(m.get("sentence_mean_cosine")), "yes" if m.get("collapsed") else "no",
                         _number(m.get("train_tokens_per_second"), 0)])
    tokenizer = _metrics(out / "tokenizer")
    lines = []
    if tokenizer:
        shown = {k: v for k, v in tokenizer.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        lines = ["Tokenizer: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in shown.items()), ""]
    if not rows and not lines:
        return []
    return ["## Pretraining (finbert2-mini)", "", *lines,
            *_table(["stage", "steps", "held-out loss before", "after", "sentence mean cosine", "collapsed",
                     "tokens/s"], rows)]


def build_tables(out: Path) -> str:
    data = _metrics(out / "data") or {}
    head = ["# Mini reproduction tables", "",
            f"Built from the run folders under `{out.name}/` by `python -m finbert2.report.reproduction tables`.", ""]
    if data:
        head += ["Data: " + ", ".join(f"{k} {v}" for k, v in data.items()), ""]
    sections = [budget_table(out), classification_tables(out), retrieval_tables(out), topic_table(out),
                pretraining_table(out)]
    return "\n".join(head + [line for section in sections for line in section])


BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"


def splice_tables(document: Path, tables: str, begin: str = BEGIN, end: str = END) -> None:
    """Put ``tables`` between the document's markers (its headings one level down), keeping the rest."""
    if not document.is_file():
        raise DataError(document, None, "no such file")
    text = document.read_text(encoding="utf-8")
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise DataError(document, None, f"expected one {begin} followed by one {end}")
    body = "\n".join("#" + line if line.startswith("#") else line for line in tables.splitlines()[1:]).strip()
    head, rest = text.split(begin)
    atomic_write_text(document, f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}")


def main(argv: list[str] | None = None) -> int:
    def run(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(prog="python -m finbert2.report.reproduction", description=__doc__.split("\n")[0])
        commands = parser.add_subparsers(dest="command", required=True)
        prepare = commands.add_parser("prepare-corpus", help="SC_2 split and the pretraining corpus")
        prepare.add_argument("data_dir", type=Path)
        prepare.add_argument("out", type=Path, help="the data folder the converters wrote into")
        prepare.add_argument("--seed", type=int, default=42)
        tables = commands.add_parser("tables", help="every results table from the run folders")
        tables.add_argument("out", type=Path)
        tables.add_argument("--output", type=Path, default=None, help="default: OUT/tables.md")
        tables.add_argument("--into", type=Path, default=None,
                            help=f"also replace the part of this markdown file between {BEGIN} and {END} "
                                 "(docs/RESULTS.md: its tables come from the runs, not by hand)")
        args = parser.parse_args(argv)
        if args.command == "prepare-corpus":
            print(json.dumps(prepare_corpus(args.data_dir, args.out, args.seed)))
        else:
            if not args.out.is_dir():
                raise DataError(args.out, None, "no such folder")
            text = build_tables(args.out)
            atomic_write_text(args.output or args.out / "tables.md", text)
            if args.into:
                splice_tables(args.into, text)
            print(text)
        return 0

    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
