"""Build ``report.md`` and a self-contained ``report.html`` from any set of run folders.

A run folder is one holding ``run_config.json`` or ``metrics.json`` (DESIGN.md section 3). For each
run the report shows its metrics, every picture it wrote (loss curves, confusion matrix, topic
map, ...), its markdown tables (e.g. a retrieval comparison), small CSV tables (e.g. topics) and
the config it ran with. Runs missing any of these are shown with what they have.

Both outputs are rendered from one list of blocks, so the two never disagree.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finbert2.data.writers import atomic_write_text
from finbert2.run import METRICS_FILE, RUN_CONFIG_FILE

# Order of stages in the report (the names run_config.json records); unknown stages follow in name order.
STAGE_ORDER = ["tokenizer", "mlm", "retromae", "classify train", "classify baseline", "classify", "retrieve mine",
               "retrieve train", "retrieve evaluate", "retrieve index", "retrieve", "topics", "numllm-build-numeric",
               "numllm-domain", "numllm-numeric", "numllm-merge", "numllm-evaluate"]
# CSV files that are logs or per-document dumps, not tables for a person.
SKIPPED_CSV = {"loss_log.csv", "doc_topics.csv"}
MAX_TABLE_ROWS = 15
MAX_CELL_CHARS = 80


@dataclass
class Block:
    kind: str  # heading | text | warning | table | image | markdown | details | link
    data: Any


def find_run_dirs(paths: list[str | Path], max_depth: int = 3) -> list[Path]:
    """Run folders at or below ``paths`` (a quickstart output holds several)."""
    found: list[Path] = []

    def visit(folder: Path, depth: int) -> None:
        if (folder / RUN_CONFIG_FILE).exists() or (folder / METRICS_FILE).exists():
            found.append(folder)
            return
        if depth < max_depth:
            for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(("checkpoint-", "."))):
                visit(child, depth + 1)

    for path in paths:
        path = Path(path)
        if path.is_dir():
            visit(path, 0)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _stage_of(run_dir: Path, record: dict | None) -> str:
    return (record or {}).get("stage") or run_dir.name


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, (list, dict)):
        value = json.dumps(value, ensure_ascii=False)
    text = str(value)
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def _csv_table(path: Path) -> tuple[list[str], list[list[str]], int]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return [], [], 0
    header, body = rows[0], rows[1:]
    return header, [[_format_value(c) for c in r] for r in body[:MAX_TABLE_ROWS]], len(body)


def run_blocks(run_dir: Path, name: str) -> list[Block]:
    record = _read_json(run_dir / RUN_CONFIG_FILE)
    metrics = _read_json(run_dir / METRICS_FILE)
    blocks = [Block("heading", (3, name))]
    meta = [f"folder `{run_dir}`"]
    if record:
        meta.append(f"commit `{(record.get('git_commit') or 'unknown')[:10]}`")
        if record.get("started_at"):
            meta.append(f"started {record['started_at']}")
    blocks.append(Block("text", ", ".join(meta)))
    if metrics is None:
        blocks.append(Block("text", "**Unfinished run**: no metrics.json."))
    else:
        if metrics.get("collapsed"):
            blocks.append(Block("warning", collapse_message(name, metrics)))
        if metrics.get("embedding_damaged"):
            blocks.append(Block("warning", damage_message(name, metrics)))
        blocks.append(Block("table", (["metric", "value"], [[k, _format_value(v)] for k, v in metrics.items()])))
    for image in sorted(run_dir.glob("*.png")):
        blocks.append(Block("image", image))
    for table in sorted(run_dir.glob("*.md")):
        if table.name.lower() != "readme.md":
            blocks.append(Block("markdown", (table.name, table.read_text(encoding="utf-8"))))
    for table in sorted(run_dir.glob("*.csv")):
        if table.name in SKIPPED_CSV:
            continue
        header, rows, total = _csv_table(table)
        if header:
            caption = table.name + (f" (first {len(rows)} of {total} rows)" if total > len(rows) else "")
            blocks.append(Block("text", f"`{caption}`"))
            blocks.append(Block("table", (header, rows)))
    if record and record.get("arguments"):
        arguments = record["arguments"]
        changed = record.get("changed_arguments")  # absent in folders of older versions: show all
        shown = sorted(arguments) if changed is None else sorted(k for k in changed if k in arguments)
        summary = (f"config: {len(shown)} arguments differ from the defaults (all {len(arguments)} in "
                   f"{RUN_CONFIG_FILE})" if changed is not None else "config")
        blocks.append(Block("details", (summary, [[k, _format_value(arguments[k])] for k in shown])))
        blocks.append(Block("link", ("full config: " + RUN_CONFIG_FILE, run_dir / RUN_CONFIG_FILE)))
    return blocks


def collapse_message(name: str, metrics: dict) -> str:
    return f"{name}: collapsed ({metrics.get('collapse_reason') or 'see run.log'})"


def damage_message(name: str, metrics: dict) -> str:
    return f"{name}: {metrics.get('embedding_damage_reason') or 'pretraining is damaging the embedding space'}"


def comparison_blocks(run_dirs: list[Path]) -> list[Block]:
    """Several runs of one stage side by side, on the metrics they share."""
    metrics = {d: _read_json(d / METRICS_FILE) or {} for d in run_dirs}
    finished = [d for d in run_dirs if metrics[d]]
    if len(finished) < 2:
        return []
    shared = [k for k in metrics[finished[0]] if all(k in metrics[d] for d in finished[1:])]
    numeric = [k for k in shared if all(isinstance(metrics[d][k], (int, float)) for d in finished)]
    if not numeric:
        return []
    rows = [[d.name] + [_format_value(metrics[d][k]) for k in numeric] for d in finished]
    return [Block("text", "Runs side by side:"), Block("table", (["run"] + numeric, rows))]


# ---------------------------------------------------------------------------------------------
# headline: per task, the best model against its baseline, the untrained start and chance


def _score(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "–"


def _difference(value: Any, reference: Any) -> str:
    if isinstance(value, (int, float)) and isinstance(reference, (int, float)):
        return f"{value - reference:+.4f}"
    return "–"


def finished_runs(run_dirs: list[Path]) -> list[tuple[Path, str, dict, dict]]:
    """``(folder, stage, arguments, metrics)`` of every finished run, each folder read once."""
    out = []
    for run_dir in run_dirs:
        record = _read_json(run_dir / RUN_CONFIG_FILE) or {}
        metrics = _read_json(run_dir / METRICS_FILE)
        if metrics:
            out.append((run_dir, _stage_of(run_dir, record), record.get("arguments") or {}, metrics))
    return out


def _runs_of(runs: list[tuple[Path, str, dict, dict]], stage: str) -> list[tuple[Path, dict, dict]]:
    """``(folder, arguments, metrics)`` of the finished runs of one stage."""
    return [(d, arguments, metrics) for d, run_stage, arguments, metrics in runs if run_stage == stage]


def _collapse_warnings(runs) -> list[Block]:
    return [Block("warning", collapse_message(d.name, m)) for d, _, m in runs if m.get("collapsed")]


def classification_headline(runs: list[tuple[Path, str, dict, dict]]) -> list[Block]:
    models, baselines = _runs_of(runs, "classify train"), _runs_of(runs, "classify baseline")
    if not models:
        return []
    split = "test" if any("test_macro_f1" in m for _, _, m in models) else "eval"

    def best(runs):
        return max(runs, key=lambda r: r[2].get(f"{split}_macro_f1", float("-inf")), default=None)

    model, baseline = best(models), best(baselines)
    reference = baseline[2].get(f"{split}_macro_f1") if baseline else None
    # validation may keep the start (--keep_start_if_better): say so, the row is then the untrained start's model
    kept_start = " (validation kept the start)" if model[2].get("kept") == "start" else ""
    rows = [[f"fine-tuned (best){kept_start}", model[0].name, _score(model[2].get("eval_macro_f1")),
             _score(model[2].get("test_macro_f1")), _difference(model[2].get(f"{split}_macro_f1"), reference)]]
    if baseline:
        rows.append(["baseline: TF-IDF + LR", baseline[0].name, _score(baseline[2].get("eval_macro_f1")),
                     _score(baseline[2].get("test_macro_f1")), ""])
    rows.append(["untrained start", model[0].name, _score(model[2].get("initial_eval_macro_f1")), "–", ""])
    rows.append(["chance: majority class", "", _score(model[2].get("eval_majority_macro_f1")), "–", ""])
    header = ["classification", "run", "validation macro-F1", "test macro-F1", f"{split} vs baseline"]
    return [Block("heading", (3, "Classification")), Block("table", (header, rows)), *_collapse_warnings(models)]


def _evaluation_labels(arguments: dict) -> dict[str, str]:
    """Model name -> the label ``retrieve evaluate`` gave it (its own naming rule)."""
    from finbert2.retrieve.evaluate import model_label

    models = list(arguments.get("models") or [])
    labels = list(arguments.get("labels") or [])
    for name in models[len(labels):]:
        labels.append(model_label(name, set(labels)))
    return dict(zip(models, labels))


def retrieval_headline(runs: list[tuple[Path, str, dict, dict]]) -> list[Block]:
    evaluations, trainings = _runs_of(runs, "retrieve evaluate"), _runs_of(runs, "retrieve train")
    if not evaluations and not trainings:
        return []
    # a fine-tuned model's starting point, to find the untrained row among the evaluated models
    start_of = {str(d.resolve()): str(a.get("model_name_or_path") or "") for d, a, _ in trainings}
    rows = []
    for run_dir, arguments, metrics in evaluations:
        labels = _evaluation_labels(arguments)
        dense = {name: label for name, label in labels.items() if label != "bm25"}
        if not dense:
            continue
        best = max(dense, key=lambda n: metrics.get(f"{dense[n]}_ndcg_at_10", float("-inf")))
        score = metrics.get(f"{dense[best]}_ndcg_at_10")
        bm25 = metrics.get("bm25_ndcg_at_10")
        start = start_of.get(str(Path(best).resolve()))
        untrained = next((metrics.get(f"{label}_ndcg_at_10") for name, label in labels.items()
                          if start and Path(name).resolve() == Path(start).resolve()), None)
        rows.append([run_dir.name, dense[best], _score(score), _score(bm25), _difference(score, bm25),
                     _score(untrained), _score(metrics.get("chance_ndcg_at_10"))])
    for run_dir, _, metrics in trainings if not rows else []:  # no evaluation run: the validation scores
        rows.append([f"{run_dir.name} (validation)", run_dir.name, _score(metrics.get("eval_ndcg_at_10")), "–", "–",
                     _score(metrics.get("initial_eval_ndcg_at_10")), "–"])
    header = ["retrieval (nDCG@10)", "best dense model", "score", "BM25", "vs BM25", "untrained start", "chance"]
    return [Block("heading", (3, "Retrieval")), Block("table", (header, rows)), *_collapse_warnings(trainings)]


def topics_headline(runs: list[tuple[Path, str, dict, dict]]) -> list[Block]:
    topic_runs = _runs_of(runs, "topics")
    if not topic_runs:
        return []
    baseline = next((m for _, a, m in topic_runs if a.get("embedding_backend") == "tfidf"), None)
    rows = []
    for run_dir, arguments, metrics in topic_runs:
        backend = arguments.get("embedding_backend")
        embeddings = "TF-IDF/LSA (baseline)" if backend == "tfidf" else str(arguments.get("model_name_or_path") or backend)
        rows.append([run_dir.name, Path(embeddings).name if backend != "tfidf" else embeddings,
                     str(metrics.get("num_topics", "–")), _score(metrics.get("npmi")),
                     _score(metrics.get("topic_diversity")), _score(metrics.get("silhouette")),
                     "" if backend == "tfidf" or baseline is None else _difference(metrics.get("npmi"), baseline.get("npmi"))])
    header = ["topics", "embeddings", "topics found", "NPMI", "topic diversity", "silhouette", "NPMI vs baseline"]
    return [Block("heading", (3, "Topics")), Block("table", (header, rows))]


def pretraining_headline(runs: list[tuple[Path, str, dict, dict]]) -> list[Block]:
    pretraining = _runs_of(runs, "mlm") + _runs_of(runs, "retromae")
    if not pretraining:
        return []

    def mlm_loss(m: dict, when: str):  # RetroMAE's eval_loss adds its decoder's: the bound reads the encoder's MLM loss
        return m.get(f"{when}eval_encoder_mlm_loss", m.get(f"{when}eval_loss"))

    rows = [[d.name, _score(mlm_loss(m, "initial_")), _score(mlm_loss(m, "")),
             _difference(mlm_loss(m, ""), mlm_loss(m, "initial_")),
             # the context-free bound: a held-out MLM loss is only read against the corpus's unigram model
             _score(m.get("unigram_cross_entropy")), _score(m.get("initial_eval_ndcg_at_10")),
             _score(m.get("eval_ndcg_at_10")), _score(m.get("sentence_mean_cosine")),
             "yes" if m.get("collapsed") else "no"] for d, _, m in pretraining]
    header = ["pretraining", "held-out MLM loss before", "after", "change", "unigram bound", "zero-shot nDCG@10 before",
              "after", "sentence cosine", "collapsed"]
    damaged = [Block("warning", damage_message(d.name, m)) for d, _, m in pretraining if m.get("embedding_damaged")]
    return [Block("heading", (3, "Pretraining")), Block("table", (header, rows)), *_collapse_warnings(pretraining),
            *damaged]


def numllm_headline(runs: list[tuple[Path, str, dict, dict]]) -> list[Block]:
    """The causal-LM side: each evaluation's accuracy table (models beside chance and the no-model rules)
    and the LoRA modules' held-out loss before and after."""
    from finbert2.report.numllm_tables import accuracy_rows

    evaluations = _runs_of(runs, "numllm-evaluate")
    modules = _runs_of(runs, "numllm-domain") + _runs_of(runs, "numllm-numeric")
    if not evaluations and not modules:
        return []
    blocks = [Block("heading", (3, "NumLLM"))]
    for run_dir, _, _ in evaluations:
        record = _read_json(run_dir / "results.json") or {}
        if not record.get("results"):
            continue
        header, rows, counts, _ = accuracy_rows(record)
        blocks += [Block("text", f"`{run_dir.name}`: multiple-choice accuracy by log-likelihood "
                                 f"({record.get('scoring')} scoring); {'; '.join(counts)}"),
                   Block("table", (header, rows))]
    rows = [[d.name, str(m.get("task", "–")), str(m.get("global_step", "–")), _score(m.get("initial_eval_loss")),
             _score(m.get("eval_loss")), _difference(m.get("eval_loss"), m.get("initial_eval_loss"))]
            for d, _, m in modules]
    if rows:
        header = ["LoRA module", "task", "steps", "held-out loss before", "after", "change"]
        blocks.append(Block("table", (header, rows)))
    return blocks


def headline_blocks(run_dirs: list[Path]) -> list[Block]:
    """One table per task the runs cover, before any per-run detail; a collapsed model's warning
    follows its task's table (the first thing a reader must see)."""
    runs = finished_runs(run_dirs)
    tables = [*classification_headline(runs), *retrieval_headline(runs), *topics_headline(runs),
              *pretraining_headline(runs), *numllm_headline(runs)]
    return [Block("heading", (2, "Results")), *tables] if tables else []


def build_blocks(run_dirs: list[Path], title: str) -> list[Block]:
    by_stage: dict[str, list[Path]] = {}
    for run_dir in run_dirs:
        by_stage.setdefault(_stage_of(run_dir, _read_json(run_dir / RUN_CONFIG_FILE)), []).append(run_dir)
    order = sorted(by_stage, key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER), s))
    blocks = [Block("heading", (1, title)), *headline_blocks(run_dirs)]
    blocks.append(Block("heading", (2, "Runs")))
    summary = [[stage, str(len(by_stage[stage])),
                str(sum((d / METRICS_FILE).exists() for d in by_stage[stage]))] for stage in order]
    blocks.append(Block("table", (["stage", "runs", "finished"], summary)))
    for stage in order:
        blocks.append(Block("heading", (2, stage)))
        if len(by_stage[stage]) > 1:
            blocks.extend(comparison_blocks(by_stage[stage]))
        for run_dir in by_stage[stage]:
            blocks.extend(run_blocks(run_dir, run_dir.name))
    return blocks


# ---------------------------------------------------------------------------------------------
# rendering


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(blocks: list[Block], output_dir: Path) -> str:
    assets = output_dir / "assets"
    parts = []
    for index, block in enumerate(blocks):
        if block.kind == "heading":
            level, text = block.data
            parts.append("#" * level + " " + text)
        elif block.kind == "text":
            parts.append(block.data)
        elif block.kind == "warning":
            parts.append(f'> <span style="color:#c00">**WARNING**</span> {_md_cell(block.data)}')
        elif block.kind == "table":
            parts.append(_md_table(*block.data))
        elif block.kind == "image":
            assets.mkdir(parents=True, exist_ok=True)
            target = assets / f"{index:03d}_{block.data.parent.name}_{block.data.name}"
            shutil.copyfile(block.data, target)
            parts.append(f"![{block.data.name}](assets/{target.name})")
        elif block.kind == "markdown":
            name, text = block.data
            parts.append(f"`{name}`\n\n{text.strip()}")
        elif block.kind == "details":
            summary, rows = block.data
            parts.append(f"<details><summary>{summary}</summary>\n\n{_md_table(['argument', 'value'], rows)}\n\n</details>")
        elif block.kind == "link":
            text, target = block.data
            parts.append(f"[{text}]({_relative(target, output_dir)})")
    return "\n\n".join(parts) + "\n"


def _relative(target: Path, output_dir: Path) -> str:
    """A link from the report folder to a run's file (runs and report move together)."""
    return Path(os.path.relpath(Path(target).resolve(), Path(output_dir).resolve())).as_posix()


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _markdown_table_to_html(text: str) -> str:
    """Markdown pipe tables become HTML tables; other lines stay as preformatted text."""
    lines = [line for line in text.strip().splitlines()]
    out, table = [], []

    def flush():
        if len(table) >= 2:
            cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in table]
            out.append(_html_table(cells[0], [r for r in cells[2:]]))
        elif table:
            out.append(f"<pre>{html.escape(chr(10).join(table))}</pre>")
        table.clear()

    for line in lines:
        if line.strip().startswith("|"):
            table.append(line)
        else:
            flush()
            if line.strip():
                out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


STYLE = """body{font-family:-apple-system,"Noto Sans CJK SC","Microsoft YaHei",sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.4em 0}
h2{border-bottom:2px solid #ddd;margin-top:2em}code{background:#f6f6f6;padding:0 3px}
.warning{color:#c00;border-left:4px solid #c00;padding-left:.6em}"""


def render_html(blocks: list[Block], title: str, output_dir: Path = Path(".")) -> str:
    parts = []
    for block in blocks:
        if block.kind == "heading":
            level, text = block.data
            parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
        elif block.kind == "text":
            text = html.escape(block.data)
            # the only markup text blocks use: `code` and **bold**
            while text.count("`") >= 2:
                text = text.replace("`", "<code>", 1).replace("`", "</code>", 1)
            while text.count("**") >= 2:
                text = text.replace("**", "<b>", 1).replace("**", "</b>", 1)
            parts.append(f"<p>{text}</p>")
        elif block.kind == "warning":
            parts.append(f'<p class="warning"><b>WARNING</b> {html.escape(block.data)}</p>')
        elif block.kind == "table":
            parts.append(_html_table(*block.data))
        elif block.kind == "image":
            encoded = base64.b64encode(block.data.read_bytes()).decode("ascii")
            parts.append(f'<img alt="{html.escape(block.data.name)}" src="data:image/png;base64,{encoded}">')
        elif block.kind == "markdown":
            name, text = block.data
            parts.append(f"<p><code>{html.escape(name)}</code></p>" + _markdown_table_to_html(text))
        elif block.kind == "details":
            summary, rows = block.data
            parts.append(f"<details><summary>{html.escape(summary)}</summary>{_html_table(['argument', 'value'], rows)}</details>")
        elif block.kind == "link":
            text, target = block.data
            parts.append(f'<p><a href="{html.escape(_relative(target, output_dir))}">{html.escape(text)}</a></p>')
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang=\"zh\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def build_report(paths: list[str | Path], output_dir: str | Path, title: str = "FinBERT2 report") -> dict[str, Any]:
    """Write ``report.md`` (+ ``assets/``) and ``report.html`` into ``output_dir``."""
    output_dir = Path(output_dir)
    run_dirs = [d for d in find_run_dirs(paths) if d != output_dir.resolve()]
    output_dir.mkdir(parents=True, exist_ok=True)
    blocks = build_blocks(run_dirs, title)
    atomic_write_text(output_dir / "report.md", render_markdown(blocks, output_dir))
    atomic_write_text(output_dir / "report.html", render_html(blocks, title, output_dir))
    return {"runs": len(run_dirs), "images": sum(b.kind == "image" for b in blocks),
            "finished_runs": sum((d / METRICS_FILE).exists() for d in run_dirs)}
