"""The mini reproduction's data step, its words-only encoder and its tables (``scripts/reproduce_mini.sh``).

    python -m finbert2.report.reproduction prepare-corpus DATA_DIR DATA_OUT [--seed 42]
    python -m finbert2.report.reproduction grow-vocab MODEL TOKENIZER OUT
    python -m finbert2.report.reproduction tables OUT [--output OUT/tables.md]

``prepare-corpus`` runs after the converters: it splits SC_2 (shipped as a 400-row test file only),
and writes the pretraining corpus with every text a later evaluation scores (or selects on) left out.
``grow-vocab`` writes the ablation's "+ domain words" encoder: MODEL with the extended vocab's new rows
the mean of their pieces, nothing trained. ``tables`` reads the finished run folders under OUT and writes
every table docs/RESULTS.md shows: the budget per stage, classification (mean +- std over seeds; the
linear probe beside fine-tuning), retrieval pooled and per source (hybrids with BM25), the ablation of
the adaptation steps, topics and pretraining. A comparison table without its untrained, chance or
classical-baseline row is an error naming the run folder, never a quietly shorter table.
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

# The task tables' encoders, in row order (each one the script ran): the start, the adapted, the adapted merged
# with its start (issue 31). The folder of finbert2-mini-merged is finbert2-mini/merged_with_start.
ENCODERS = ("general", "finbert2-mini", "finbert2-mini-merged")
# The ablation: each adaptation step's encoder zero-shot on the Fin-Eva test split (labels of the evaluation run).
ABLATION = {"general": "general (e5-small, pruned): the untrained start",
            "domain-words": "+ domain words (new rows = mean of pieces, no training)",
            "mlm": "+ whole-word MLM", "mlm-merged": "+ whole-word MLM, merged with its start",
            "finbert2-mini": "+ RetroMAE (= finbert2-mini)",
            "finbert2-mini-merged": "+ RetroMAE, merged with its start (= finbert2-mini merged)"}
ABLATION_ONLY = ("domain-words", "mlm", "mlm-merged")  # shown in the ablation, not in the task table
HYBRID_SUFFIX = "+bm25"  # finbert2 retrieve evaluate --hybrid: "<model>+bm25" rows
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
    # held-out contexts (the retrieval test and validation documents with a relevant query: the pretraining
    # stages keep their checkpoint by the validation score).
    held_out = {_key(r["text"]) for r in test}
    for task in ("cfb_sentiment", "cfb_event"):
        held_out |= {_key(t) for t in _texts(out / task / "test.jsonl")}
    test_docs = {r["docid"] for split in ("eval", "validation") if (out / "fineva" / split).is_dir()
                 for _, r in iter_jsonl(out / "fineva" / split / "test_qrels.jsonl")}
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


def prepare_data(data_dir: Path, out: Path, seed: int, fineva_validation: float) -> dict[str, int]:
    """Every converted dataset of the reproduction (and of ``scripts/sweep_adaptation.py``), then the corpus:
    CFBenchmark sentiment and event (level 1), SC_2, Fin-Eva with a validation split of ``fineva_validation``
    of its contexts, the JINGEWU headlines; one place, so the two cannot drift apart."""
    from finbert2.converters.cli import main as convert

    cfb = data_dir / "cfbenchmark-basic" / "data"
    split = ["--test_fraction", "0.2", "--validation_fraction", "0.1", "--seed", str(seed)]
    for command in (
            ["cfbenchmark-sentiment", str(cfb / "sentiment.jsonl"), str(out / "cfb_sentiment"), *split],
            ["cfbenchmark-event", str(cfb / "event.jsonl"), str(out / "cfb_event"), "--level", "1", *split],
            ["sc2", str(data_dir / "finbert2-upstream" / "Fin-labeler" / "SC_2" / "test_SC_2.csv"),
             str(out / "sc2_all.jsonl")],
            ["fin-eva", "--input_dir", str(data_dir / "fin-eva"), "--output_dir", str(out / "fineva"),
             "--validation_fraction", str(fineva_validation), "--seed", str(seed)],
            ["jingewu", str(data_dir / "jingewu-financial-sentiment-analysis" / "data" / "CH.csv"),
             "--output_file", str(out / "jingewu.jsonl")]):
        if convert(command) != 0:
            raise DataError(out, None, f"finbert2 convert {command[0]} failed (its message is above)")
    return prepare_corpus(data_dir, out, seed)


def grow_vocab(model_dir: Path, tokenizer_dir: Path, out: Path) -> dict[str, Any]:
    """MODEL with TOKENIZER's extended vocab, each new row the mean of its pieces and nothing trained (the MLM
    stage's start): the ablation's "+ domain words" encoder, saved with MODEL's pooling and prompts."""
    import shutil

    from transformers import AutoModel

    from finbert2.modeling import ModelArguments, load_model, load_tokenizer
    from finbert2.retrieve.encoder import inherit_sentence_settings

    tokenizer = load_tokenizer(str(tokenizer_dir))
    model = load_model(AutoModel, ModelArguments(model_name_or_path=str(model_dir), tokenizer_name=str(tokenizer_dir)),
                       tokenizer, grow_embeddings=True)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    inherit_sentence_settings(str(model_dir), partial,
                              max_seq_length=min(tokenizer.model_max_length, model.config.max_position_embeddings))
    rows = model.get_input_embeddings().weight.shape[0]
    base_rows = len(load_tokenizer(str(model_dir)))
    metrics = {"vocab_size": rows, "base_vocab_size": base_rows, "added_rows": rows - base_rows}
    write_json(partial / "metrics.json", metrics)  # the finished marker, inside the folder before it is renamed
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return metrics


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


def require(present: bool, folder: Path, row: str) -> None:
    """A comparison table's untrained, chance and baseline rows are what its numbers mean against: stop without one."""
    if not present:
        raise DataError(folder, None, f"tables: no {row} row (its run is missing or incomplete)")


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


def seed_runs(folder: Path, encoder: str) -> list[dict[str, Any]]:
    """The finished runs ``<encoder>_seed<N>`` of one task, in seed order."""
    runs = [(int(p.name.rpartition("_seed")[2]), _metrics(p)) for p in folder.glob(f"{encoder}_seed*")
            if p.name.rpartition("_seed")[2].isdigit()]
    return [m for _, m in sorted(runs, key=lambda run: run[0]) if m]


def classification_tables(out: Path) -> list[str]:
    lines: list[str] = []
    for task, title in CLASSIFICATION_TASKS.items():
        folder = out / "classify" / task
        if not folder.is_dir():
            continue
        rows, majority = [], None
        for encoder in ENCODERS:
            runs = seed_runs(folder, encoder)
            if not runs:
                continue
            majority = majority or runs[0].get("test_majority_macro_f1")
            pick = lambda key: [m.get(key) for m in runs]  # noqa: E731
            head = runs[0].get("head_init", "random")
            kept_start = sum(m.get("kept") == "start" for m in runs)
            rows.append([f"fine-tuned from {encoder}", mean_std(pick("eval_macro_f1")),
                         mean_std(pick("test_macro_f1")), mean_std(pick("test_accuracy")),
                         f"{kept_start}/{len(runs)}", mean_std(pick("total_seconds"), 0)])
            if any(m.get("probe_test_macro_f1") is not None for m in runs):
                rows.append([f"LP (probe only) on {encoder}", mean_std(pick("probe_eval_macro_f1")),
                             mean_std(pick("probe_test_macro_f1")), mean_std(pick("probe_test_accuracy")), "–", "–"])
            rows.append([f"{encoder}, untrained ({head} head)", mean_std(pick("initial_eval_macro_f1")), "–", "–", "–",
                         "–"])
        require(bool(seed_runs(folder, "general")), folder / "general_seed*", "untrained (general)")
        baseline = _metrics(folder / "tfidf")
        require(baseline is not None, folder / "tfidf", "TF-IDF + logistic regression baseline")
        rows.append(["TF-IDF + logistic regression", _number(baseline.get("eval_macro_f1")),
                     _number(baseline.get("test_macro_f1")), _number(baseline.get("test_accuracy")), "–", "–"])
        require(majority is not None, folder, "chance (majority class)")
        rows.append(["chance: majority class", "–", _number(majority), "–", "–", "–"])
        lines += [f"### {title}", "", *_table(["model", "validation macro-F1", "test macro-F1", "test accuracy",
                                               "start kept (seeds)", "seconds per run"], rows)]
    return ["## Classification", "",
            "Mean ± sample std over the seeds (n); LP = logistic regression on the frozen encoder's features, the "
            "head fine-tuning starts from with `--head_init probe`; \"start kept\": seeds whose validation macro-F1 "
            "preferred the start to every fine-tuned epoch (`--keep_start_if_better`).", "", *lines] if lines else []


def _retrieval_row(evaluation: dict, label: str) -> list[str]:
    return [label, *(_number(evaluation.get(f"{label}_{metric}"))
                     for metric in ("ndcg_at_10", "mrr_at_10", "recall_at_10", "recall_at_100"))]


def retrieval_tables(out: Path) -> list[str]:
    folder = out / "retrieve" / "evaluation"
    evaluation = _metrics(folder)
    if not evaluation:
        return []
    evaluated = [k[:-len("_ndcg_at_10")] for k in evaluation if k.endswith("_ndcg_at_10")]
    for label, row in (("bm25", "BM25 baseline"), ("chance", "chance"), ("general", "untrained (general zero-shot)")):
        require(label in evaluated, folder, row)
    for label in evaluated:
        if label.startswith("finetuned_") and HYBRID_SUFFIX not in label:
            require(label + HYBRID_SUFFIX in evaluated, folder, f"{label}{HYBRID_SUFFIX} hybrid")
    # the ablation-only encoders have their own table
    labels = [label for label in evaluated if label.removesuffix(HYBRID_SUFFIX) not in ABLATION_ONLY]
    lines = ["## Retrieval (Fin-Eva held-out split)", "",
             f"{evaluation.get('num_queries')} test queries over {evaluation.get('num_documents')} contexts. "
             f"Encoders zero-shot, `finetuned_*` fine-tuned on hard negatives each mined itself (checkpoint kept "
             f"by validation nDCG@10), `*{HYBRID_SUFFIX}` reciprocal-rank fusion with BM25.", "",
             *_table(["model", "nDCG@10", "MRR@10", "recall@10", "recall@100"],
                     [_retrieval_row(evaluation, label) for label in labels])]
    by_source = evaluation.get("ndcg_at_10_by_source") or {}
    if by_source:
        sources = sorted({s for row in by_source.values() for s in row})
        rows = [[label, *(_number(row.get(s)) for s in sources)] for label, row in by_source.items() if label in labels]
        lines += ["### nDCG@10 per source file", "", *_table(["model", *sources], rows)]
    lines += paired_differences(folder, evaluated)
    trainings = []
    for encoder in ENCODERS:
        metrics = _metrics(out / "retrieve" / f"finetuned_{encoder}")
        mined = _metrics(out / "retrieve" / f"mined_{encoder}")
        if metrics:
            # the kept step from the checkpoint's name (finbert2.training.checkpoint_step would import torch here)
            kept = re.fullmatch(r"checkpoint-(\d+)", Path(metrics.get("best_model_checkpoint") or "").name)
            trainings.append([encoder, _number(metrics.get("epoch"), 2), kept.group(1) if kept else "–",
                              _number(metrics.get("initial_eval_ndcg_at_10")), _number(metrics.get("best_metric")),
                              _number(metrics.get("train_loss")), _number(metrics.get("passage_mean_cosine")),
                              "yes" if metrics.get("collapsed") else "no", _number(metrics.get("total_seconds"), 0),
                              _number((mined or {}).get("queries"), 0), _number((mined or {}).get("mean_negatives"), 2),
                              _number((mined or {}).get("random_negatives"), 0)])
    if trainings:
        lines += ["### Fine-tuning runs", "",
                  *_table(["from", "epochs", "kept step", "validation nDCG@10 start", "kept", "train loss",
                           "passage mean cosine", "collapsed", "seconds", "mined queries", "negatives per query",
                           "of them random fill"], trainings)]
    return lines


# (A, B) pairs whose test nDCG@10 difference the reproduction reports with its bootstrap interval: each
# adaptation step against the one before, fine-tuning against its start, and the goals' comparisons
DIFFERENCE_PAIRS = [
    ("domain-words", "general"), ("mlm", "domain-words"), ("finbert2-mini", "mlm"),
    ("finbert2-mini-merged", "general"), ("finetuned_general", "general"),
    ("finetuned_finbert2-mini-merged", "finbert2-mini-merged"), ("finetuned_finbert2-mini-merged", "general"),
    ("finetuned_finbert2-mini-merged", "finetuned_general"), ("finetuned_general" + HYBRID_SUFFIX, "bm25"),
    ("finetuned_finbert2-mini-merged" + HYBRID_SUFFIX, "bm25"),
]


def _per_query_ndcg(path: Path) -> dict[str, float]:
    return {row["qid"]: row["ndcg_at_10"] for _, row in iter_jsonl(path)}


def paired_differences(folder: Path, evaluated: list[str]) -> list[str]:
    """The per-query paired bootstrap of ``DIFFERENCE_PAIRS`` present in the evaluation (one run, no seeds:
    the interval says whether a difference outlives the choice of test queries)."""
    from finbert2.retrieve.metrics import paired_bootstrap

    rows = []
    for a, b in DIFFERENCE_PAIRS:
        files = [folder / "per_query" / f"{label}.jsonl" for label in (a, b)]
        if a not in evaluated or b not in evaluated or not all(f.is_file() for f in files):
            continue
        diff = paired_bootstrap(*(_per_query_ndcg(f) for f in files))
        verdict = "A higher" if diff["low"] > 0 else "B higher" if diff["high"] < 0 else "not distinguishable"
        rows.append([a, b, f"{diff['mean']:+.4f}", f"[{diff['low']:+.4f}, {diff['high']:+.4f}]",
                     f"{diff['wins']} / {diff['losses']}", verdict])
    if not rows:
        return []
    return ["### Paired differences (test nDCG@10, A - B)", "",
            "Mean per-query difference with a 95% percentile bootstrap interval over the test queries (10,000 "
            "resamples, seed 0); wins / losses count the queries where A scores above / below B.", "",
            *_table(["A", "B", "difference", "95% interval", "wins / losses", "verdict"], rows)]


def ablation_table(out: Path) -> list[str]:
    """Each adaptation step zero-shot on the Fin-Eva test split, its validation score (the pretraining runs' own
    retrieval probe) beside it: a step that hurts shows at once."""
    folder = out / "retrieve" / "evaluation"
    evaluation = _metrics(folder)
    if not evaluation or not any(f"{label}_ndcg_at_10" in evaluation for label in ABLATION_ONLY):
        return []
    mlm, mini = _metrics(out / "mlm") or {}, _metrics(out / "finbert2-mini") or {}
    # validation nDCG@10 and merge alpha per step, from the pretraining runs' records
    validation = {"general": mlm.get("merge_model_b_ndcg_at_10"), "domain-words": mlm.get("initial_eval_ndcg_at_10"),
                  "mlm": mlm.get("eval_ndcg_at_10"), "mlm-merged": mlm.get("merge_ndcg_at_10"),
                  "finbert2-mini": mini.get("eval_ndcg_at_10"), "finbert2-mini-merged": mini.get("merge_ndcg_at_10")}
    alpha = {"mlm-merged": mlm.get("merge_alpha"), "finbert2-mini-merged": mini.get("merge_alpha")}
    rows = []
    for label, title in ABLATION.items():
        if f"{label}_ndcg_at_10" in evaluation:
            rows.append([title, _number(validation.get(label)), _number(evaluation[f"{label}_ndcg_at_10"]),
                         _number(evaluation.get(f"{label}_recall_at_100")), _number(alpha.get(label), 2)])
    for label, row in (("general", "untrained (general)"), ("bm25", "BM25 baseline"), ("chance", "chance")):
        require(f"{label}_ndcg_at_10" in evaluation, folder, row)
    rows += [["BM25 baseline", "–", _number(evaluation["bm25_ndcg_at_10"]),
              _number(evaluation.get("bm25_recall_at_100")), "–"],
             ["chance: random ranking", "–", _number(evaluation["chance_ndcg_at_10"]),
              _number(evaluation.get("chance_recall_at_100")), "–"]]
    return ["## Ablation: the adaptation steps, zero-shot (Fin-Eva)", "",
            "Validation nDCG@10 as the pretraining runs scored it (the kept checkpoint; a merge's chosen alpha: "
            "1 = the trained model, 0 = its start); test on the held-out split.", "",
            *_table(["encoder", "validation nDCG@10", "test nDCG@10", "test recall@100", "merge alpha"], rows)]


def topic_table(out: Path) -> list[str]:
    folder = out / "topics"
    rows, found = [], set()
    for name in (*ENCODERS, "tfidf"):
        m = _metrics(folder / name)
        if m:
            found.add(name)
            rows.append([name if name != "tfidf" else "TF-IDF / LSA", str(m.get("num_topics")),
                         _number(m.get("outlier_ratio")), _number(m.get("silhouette")), _number(m.get("npmi")),
                         _number(m.get("topic_diversity")), _number(m.get("largest_topic_share")),
                         _number(m.get("total_seconds"), 0)])
    if not rows:
        return []
    require("general" in found, folder / "general", "untrained (general embeddings)")
    require("tfidf" in found, folder / "tfidf", "TF-IDF / LSA baseline")
    return ["## Topics (JINGEWU headlines)", "",
            "No chance row: silhouette and NPMI have no fixed random level; the untrained general embeddings and "
            "TF-IDF/LSA are the references.", "",
            *_table(["embeddings", "topics", "outlier share", "silhouette", "NPMI", "diversity", "largest topic",
                     "seconds"], rows)]


def pretraining_table(out: Path) -> list[str]:
    rows = []
    for name, folder in (("whole-word MLM", out / "mlm"), ("RetroMAE", out / "finbert2-mini")):
        m = _metrics(folder)
        if m:
            # RetroMAE's loss is encoder MLM + decoder: its encoder's MLM part is what the unigram bound compares to
            mlm_key = "eval_encoder_mlm_loss" if "eval_encoder_mlm_loss" in m else "eval_loss"
            rows.append([name, str(m.get("global_step")), _number(m.get(f"initial_{mlm_key}")),
                         _number(m.get(mlm_key)), _number(m.get("unigram_cross_entropy")),
                         _number(m.get("initial_eval_ndcg_at_10")), _number(m.get("eval_ndcg_at_10")),
                         _number(m.get("merge_alpha"), 2), _number(m.get("merge_ndcg_at_10")),
                         _number(m.get("merge_probe_macro_f1")), _number(m.get("merge_mlm_loss")),
                         _number(m.get("sentence_mean_cosine")),
                         "**damaged**" if m.get("embedding_damaged") else "quiet",
                         _number(m.get("train_runtime"), 0), _number(m.get("train_tokens_per_second"), 0)])
    tokenizer = _metrics(out / "tokenizer")
    lines = []
    if tokenizer:
        shown = {k: v for k, v in tokenizer.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        lines = ["Tokenizer: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in shown.items()), ""]
    if not rows and not lines:
        return []
    return ["## Pretraining (finbert2-mini)", "", *lines,
            "Held-out MLM loss against the corpus's unigram cross-entropy on the same masked tokens (the context-free "
            "bound); validation nDCG@10 of the start and of the kept checkpoint; the merge with the start (its "
            "probe's validation macro-F1 and its own held-out MLM loss, which auto keeps below the bound).", "",
            *_table(["stage", "steps", "held-out MLM loss before", "after", "unigram bound", "val nDCG@10 start",
                     "kept", "merge alpha", "merged val nDCG@10", "merged probe F1", "merged MLM loss",
                     "sentence mean cosine", "damage guard",
                     "train seconds", "tokens/s"], rows)]


def build_tables(out: Path) -> str:
    data = _metrics(out / "data") or {}
    head = ["# Mini reproduction tables", "",
            f"Built from the run folders under `{out.name}/` by `python -m finbert2.report.reproduction tables`.", ""]
    if data:
        head += ["Data: " + ", ".join(f"{k} {v}" for k, v in data.items()), ""]
    sections = [budget_table(out), classification_tables(out), retrieval_tables(out), ablation_table(out),
                topic_table(out), pretraining_table(out)]
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
        data = commands.add_parser("prepare-data", help="every converter, then prepare-corpus")
        data.add_argument("data_dir", type=Path, help="the public data folder (../shared/data)")
        data.add_argument("out", type=Path, help="the data folder to write")
        data.add_argument("--seed", type=int, default=42)
        data.add_argument("--fineva_validation", type=float, default=0.15,
                          help="share of Fin-Eva contexts held out for checkpoint choice")
        grow = commands.add_parser("grow-vocab", help="the '+ domain words' encoder: MODEL grown to TOKENIZER's vocab")
        grow.add_argument("model", type=Path)
        grow.add_argument("tokenizer", type=Path, help="the tokenizer stage's output (MODEL's vocab + domain words)")
        grow.add_argument("output_dir", type=Path)
        tables = commands.add_parser("tables", help="every results table from the run folders")
        tables.add_argument("out", type=Path)
        tables.add_argument("--output", type=Path, default=None, help="default: OUT/tables.md")
        tables.add_argument("--into", type=Path, default=None,
                            help=f"also replace the part of this markdown file between {BEGIN} and {END} "
                                 "(docs/RESULTS.md: its tables come from the runs, not by hand)")
        args = parser.parse_args(argv)
        if args.command == "prepare-corpus":
            print(json.dumps(prepare_corpus(args.data_dir, args.out, args.seed)))
        elif args.command == "prepare-data":
            print(json.dumps(prepare_data(args.data_dir, args.out, args.seed, args.fineva_validation)))
        elif args.command == "grow-vocab":
            print(json.dumps(grow_vocab(args.model, args.tokenizer, args.output_dir)))
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
