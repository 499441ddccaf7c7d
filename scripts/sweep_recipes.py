"""The validation sweeps behind the recipes in ``configs/``: e5-small.yaml (multilingual-e5-small)
and the tiny from-scratch ones.

    python scripts/sweep_recipes.py retriever       DATA_DIR OUT [--max_steps 20]
    python scripts/sweep_recipes.py retromae        DATA_DIR OUT [--max_steps 20]
    python scripts/sweep_recipes.py topics          DATA_DIR OUT
    python scripts/sweep_recipes.py tiny-retriever  - OUT       # demo data, from random weights
    python scripts/sweep_recipes.py tiny-classify   - OUT
    python scripts/sweep_recipes.py tables          - OUT       # markdown -> OUT/<sweep>.md

DATA_DIR is the public data folder (``FINBERT2_PUBLIC_DATA``). Every choice is made on validation
data: Fin-Eva is converted with a validation split (``--validation_fraction 0.15``; its corpus holds
no test passage), the retrieval runs evaluate on ``validation/`` only and the test folder is never
read. RetroMAE is scored by what it is for: the zero-shot validation nDCG@10 of the continued
encoder. Topics are unsupervised: the settings are compared on the fit's own metrics. Runs are
sequential (one training process at a time on a small machine); a run whose folder already holds
``metrics.json`` is skipped, so an interrupted sweep is resumed by running it again.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# (learning rate, temperature, pooling): the rate first, then the temperature. Pooling is compared
# zero-shot (e5 was trained with mean pooling; its [CLS] row is the control for a mismatched pooling).
RETRIEVER_GRID = [("1e-5", "0.02", "mean"), ("3e-5", "0.02", "mean"), ("1e-4", "0.02", "mean"),
                  ("3e-5", "0.05", "mean")]
RETROMAE_LRS = ["2e-5", "5e-5", "1e-4"]
TOPIC_PROMPTS = ["clustering", "document", "none"]  # e5's "query: " (its clustering prompt), "passage: ", no prefix
TOPIC_SEEDS = [42, 1, 2]
# from random weights on the demo data: mean pooling (a scratch [CLS] does not move in minutes)
TINY_RETRIEVER_LRS = ["1e-4", "3e-4", "1e-3", "3e-3"]
TINY_CLASSIFY_LRS = ["1e-4", "5e-4", "1e-3", "2e-3"]


def run(out: Path, name: str, cmd: list[str]) -> Path:
    """One command, logged to OUT/logs/NAME.log, skipped when its run folder is complete."""
    folder = out / name
    if (folder / "metrics.json").is_file():
        print(f"[skip] {name}", flush=True)
        return folder
    (out / "logs").mkdir(parents=True, exist_ok=True)
    print(f"[run] {name}: {' '.join(cmd)}", flush=True)
    started = time.time()
    with open(out / "logs" / f"{name}.log", "w", encoding="utf-8") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    print(f"[done] {name}: exit {rc} in {time.time() - started:.0f} s", flush=True)
    if rc != 0:
        sys.exit(f"{name} failed (exit {rc}); see {out / 'logs' / (name + '.log')}")
    return folder


def e5_model(out: Path) -> Path:
    """The pruned conversion (Chinese + ASCII pieces), exported once into OUT/e5-small."""
    folder = out / "e5-small"
    if not (folder / "metrics.json").is_file():
        subprocess.check_call(["finbert2", "convert", "multilingual-e5-small", str(folder), "--prune_vocab"], cwd=REPO)
    return folder


def fin_eva(data_dir: Path, out: Path) -> Path:
    folder = out / "fin-eva"
    if not (folder / "conversion.json").is_file():
        subprocess.check_call(["finbert2", "convert", "fin-eva", "--input_dir", str(data_dir / "fin-eva"),
                               "--output_dir", str(folder), "--validation_fraction", "0.15"], cwd=REPO)
    return folder


def retriever_name(lr: str, temperature: str, pooling: str) -> str:
    return f"retriever_lr{lr}_t{temperature}_{pooling}"


def sweep_retriever(data_dir: Path, out: Path, max_steps: int) -> None:
    model, data = e5_model(out), fin_eva(data_dir, out)
    run(out, "retriever_zeroshot", ["finbert2", "retrieve", "evaluate", "--eval_data", str(data / "validation"),
                                    "--models", "bm25", str(model), "--max_length", "256",
                                    "--output_dir", str(out / "retriever_zeroshot")])
    run(out, "retriever_zeroshot_cls", ["finbert2", "retrieve", "evaluate", "--eval_data", str(data / "validation"),
                                        "--models", str(model), "--labels", "e5-small-cls", "--pooling", "cls",
                                        "--max_length", "256", "--output_dir", str(out / "retriever_zeroshot_cls")])
    half = max(1, max_steps // 2)
    for lr, temperature, pooling in RETRIEVER_GRID:
        run(out, retriever_name(lr, temperature, pooling), [
            "finbert2", "retrieve", "train", "configs/retriever/e5-small.yaml", "--model_name_or_path", str(model),
            "--train_data", str(data / "train.jsonl"), "--eval_data", str(data / "validation"),
            "--learning_rate", lr, "--temperature", temperature, "--pooling", pooling, "--max_steps", str(max_steps),
            "--eval_steps", str(half), "--save_steps", str(half), "--seed", "42",
            "--output_dir", str(out / retriever_name(lr, temperature, pooling))])


def sweep_retromae(data_dir: Path, out: Path, max_steps: int) -> None:
    """Continue e5 with RetroMAE on the Fin-Eva training contexts, then score each encoder zero-shot."""
    model, data = e5_model(out), fin_eva(data_dir, out)
    corpus = out / "retromae_corpus.txt"
    if not corpus.is_file():  # the training side's passages only: no validation or test context
        rows = [json.loads(line) for line in (data / "train.jsonl").read_text("utf-8").splitlines() if line.strip()]
        texts = sorted({p for row in rows for p in row["pos"] + row["neg"]})
        corpus.write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
    encoders = []
    for lr in RETROMAE_LRS:
        folder = run(out, f"retromae_lr{lr}", [
            "finbert2", "retromae", "configs/retromae/e5-small.yaml", "--model_name_or_path", str(model),
            "--train_data", str(corpus), "--learning_rate", lr, "--max_steps", str(max_steps),
            "--eval_steps", str(max_steps), "--save_steps", str(max_steps), "--seed", "42",
            "--output_dir", str(out / f"retromae_lr{lr}")])
        encoders.append(str(folder))
    run(out, "retromae_zeroshot", ["finbert2", "retrieve", "evaluate", "--eval_data", str(data / "validation"),
                                   "--models", str(model), *encoders, "--labels", "e5-small",
                                   *[f"retromae_lr{lr}" for lr in RETROMAE_LRS], "--max_length", "256",
                                   "--output_dir", str(out / "retromae_zeroshot")])


def sweep_topics(data_dir: Path, out: Path) -> None:
    model = e5_model(out)
    headlines = out / "jingewu_titles.jsonl"
    if not headlines.is_file():
        subprocess.check_call(["finbert2", "convert", "jingewu",
                               str(data_dir / "jingewu-financial-sentiment-analysis" / "data" / "CH.csv"),
                               "--output_file", str(headlines), "--max_docs", "2000", "--seed", "42"], cwd=REPO)
    for seed in TOPIC_SEEDS:  # UMAP/HDBSCAN vary with the seed: the spread says which gaps are real
        for prompt in TOPIC_PROMPTS:
            name = topics_name(prompt, seed)
            run(out, name, ["finbert2", "topics", "configs/topics/e5-small.yaml", "--model_name_or_path", str(model),
                            "--train_data", str(headlines), "--prompt_name", prompt, "--seed", str(seed),
                            "--output_dir", str(out / name)])
        name = topics_name("tfidf", seed)
        run(out, name, ["finbert2", "topics", "configs/topics/e5-small.yaml", "--embedding_backend", "tfidf",
                        "--train_data", str(headlines), "--seed", str(seed), "--output_dir", str(out / name)])


def topics_name(prompt: str, seed: int) -> str:
    return f"topics_{prompt}" if seed == TOPIC_SEEDS[0] else f"topics_{prompt}_seed{seed}"


# ----------------------------------------------------------------------------- tables

def metrics(folder: Path) -> dict:
    path = folder / "metrics.json"
    return json.loads(path.read_text("utf-8")) if path.is_file() else {}


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def eval_history(folder: Path, key: str, axis: str = "step") -> list[tuple[int, float]]:
    """``(step or epoch, value)`` of every evaluation, from the last checkpoint's trainer state."""
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not checkpoints:
        return []
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text("utf-8"))
    return [(round(e[axis]), e[key]) for e in state["log_history"] if key in e]


def retriever_table(out: Path) -> str:
    zero = metrics(out / "retriever_zeroshot")
    lines = ["| model | lr | temperature | pooling | val nDCG@10 (step: value) | best | passage cosine | "
             "collapsed | s/step (shared CPU) |", "|---|---|---|---|---|---|---|---|---|",
             "| chance (random ranking) | | | | | " + fmt(zero.get("chance_ndcg_at_10")) + " | | | |",
             "| BM25 (jieba) | | | | | " + fmt(zero.get("bm25_ndcg_at_10")) + " | | | |",
             "| e5-small zero-shot | | | mean | | " + fmt(zero.get("e5-small_ndcg_at_10")) + " | | | |",
             "| e5-small zero-shot | | | cls | | " + fmt(metrics(out / "retriever_zeroshot_cls").get("e5-small-cls_ndcg_at_10"))
             + " | | | |"]
    for lr, temperature, pooling in RETRIEVER_GRID:
        folder = out / retriever_name(lr, temperature, pooling)
        m = metrics(folder)
        if not m:
            lines.append(f"| fine-tuned | {lr} | {temperature} | {pooling} | not run | | | | |")
            continue
        history = [(0, m.get("initial_eval_ndcg_at_10"))] + eval_history(folder, "eval_ndcg_at_10")
        best = max((v for s, v in history[1:]), default=None)
        per_step = 1 / m["train_steps_per_second"] if m.get("train_steps_per_second") else float("nan")
        lines.append(f"| fine-tuned | {lr} | {temperature} | {pooling} | "
                     + ", ".join(f"{s}: {fmt(v, 3)}" for s, v in history) + f" | {fmt(best)} | "
                     f"{fmt(m.get('passage_mean_cosine'), 3)} | {str(m.get('collapsed', False)).lower()} | {per_step:.1f} |")
    return "\n".join(lines)


def retromae_table(out: Path) -> str:
    zero = metrics(out / "retromae_zeroshot")
    lines = ["| encoder | lr | held-out loss | sentence cosine | zero-shot val nDCG@10 |", "|---|---|---|---|---|",
             "| e5-small as converted | | | | " + fmt(zero.get("e5-small_ndcg_at_10")) + " |"]
    for lr in RETROMAE_LRS:
        m = metrics(out / f"retromae_lr{lr}")
        lines.append(f"| + RetroMAE | {lr} | {fmt(m.get('eval_loss'))} | {fmt(m.get('sentence_mean_cosine'), 3)} "
                     f"| {fmt(zero.get(f'retromae_lr{lr}_ndcg_at_10'))} |")
    return "\n".join(lines)


def topics_table(out: Path) -> str:
    import statistics

    keys = ("num_topics", "outlier_ratio", "silhouette", "davies_bouldin", "topic_diversity", "npmi")
    lines = ["| embeddings | prompt | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for prompt in [*TOPIC_PROMPTS, "tfidf"]:
        runs = [m for m in (metrics(out / topics_name(prompt, seed)) for seed in TOPIC_SEEDS) if m]
        cells = []
        for key in keys:
            values = [m[key] for m in runs if isinstance(m.get(key), (int, float))]
            spread = f" +- {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.3f}{spread}" if values else "-")
        label = ("TF-IDF/LSA (baseline)", "-") if prompt == "tfidf" else ("e5-small", prompt)
        lines.append(f"| {label[0]} | {label[1]} | " + " | ".join(cells) + f" |")
    lines.append(f"\nmean +- std over seeds {', '.join(map(str, TOPIC_SEEDS))} (runs found: "
                 f"{sum(bool(metrics(out / topics_name(p, s))) for p in [*TOPIC_PROMPTS, 'tfidf'] for s in TOPIC_SEEDS)})")
    return "\n".join(lines)


def tiny_retriever_table(out: Path) -> str:
    lines = ["| model | lr | val nDCG@10 (step: value) | best | passage cosine | collapsed |", "|---|---|---|---|---|---|"]
    bm25 = metrics(out / "tiny_retriever_bm25")
    lines += [f"| chance | | | {fmt(bm25.get('chance_ndcg_at_10'))} | | |", f"| BM25 | | | {fmt(bm25.get('bm25_ndcg_at_10'))} | | |"]
    for lr in TINY_RETRIEVER_LRS:
        folder = out / f"tiny_retriever_lr{lr}"
        m = metrics(folder)
        history = [(0, m.get("initial_eval_ndcg_at_10"))] + eval_history(folder, "eval_ndcg_at_10") if m else []
        best = max((v for s, v in history[1:]), default=None)
        lines.append(f"| tiny, mean pooling | {lr} | " + ", ".join(f"{s}: {fmt(v, 3)}" for s, v in history)
                     + f" | {fmt(best)} | {fmt(m.get('passage_mean_cosine'), 3)} | {str(m.get('collapsed', '-')).lower()} |")
    return "\n".join(lines)


def tiny_classify_table(out: Path) -> str:
    runs = {lr: metrics(out / f"tiny_classify_lr{lr}") for lr in TINY_CLASSIFY_LRS}
    first = next((m for m in runs.values() if m), {})
    base = metrics(out / "tiny_classify_baseline")
    lines = ["| model | lr | val macro-F1 (epoch: value) | best val macro-F1 | test macro-F1 | collapsed |",
             "|---|---|---|---|---|---|",
             f"| majority class | | | {fmt(first.get('eval_majority_macro_f1'))} | | |",
             f"| untrained start | | | {fmt(first.get('initial_eval_macro_f1'))} | | |",
             f"| TF-IDF + LR | | | {fmt(base.get('eval_macro_f1'))} | {fmt(base.get('test_macro_f1'))} | |"]
    for lr, m in runs.items():
        history = eval_history(out / f"tiny_classify_lr{lr}", "eval_macro_f1", axis="epoch")
        lines.append(f"| tiny from scratch | {lr} | " + ", ".join(f"{e}: {fmt(v, 3)}" for e, v in history)
                     + f" | {fmt(m.get('eval_macro_f1'))} | {fmt(m.get('test_macro_f1'))} | "
                     f"{str(m.get('collapsed', '-')).lower()} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", choices=["retriever", "retromae", "topics", "tiny-retriever", "tiny-classify", "tables"])
    parser.add_argument("data_dir", type=Path, help="public data folder (FINBERT2_PUBLIC_DATA); '-' for the tiny sweeps")
    parser.add_argument("out", type=Path, help="where the runs and tables go")
    parser.add_argument("--max_steps", type=int, default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.sweep == "retriever":
        sweep_retriever(args.data_dir, args.out, args.max_steps or 20)
    elif args.sweep == "retromae":
        sweep_retromae(args.data_dir, args.out, args.max_steps or 20)
    elif args.sweep == "topics":
        sweep_topics(args.data_dir, args.out)
    elif args.sweep == "tiny-retriever":
        sweep_tiny_retriever(args.out)
    elif args.sweep == "tiny-classify":
        sweep_tiny_classify(args.out)
    for name, table in (("retriever", retriever_table), ("retromae", retromae_table), ("topics", topics_table),
                        ("tiny-retriever", tiny_retriever_table), ("tiny-classify", tiny_classify_table)):
        text = table(args.out)
        (args.out / f"{name}.md").write_text(text + "\n", encoding="utf-8")
        if args.sweep in (name, "tables"):
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
