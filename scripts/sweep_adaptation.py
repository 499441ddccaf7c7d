"""The validation sweeps behind the domain-adaptation recipes of configs/{mlm,classify,retriever}/e5-small.yaml.

    python scripts/sweep_adaptation.py mlm       DATA_DIR OUT    # continued MLM from headless e5-small
    python scripts/sweep_adaptation.py retromae  DATA_DIR OUT    # RetroMAE's new heads from e5-small
    python scripts/sweep_adaptation.py classify  DATA_DIR OUT    # pooling x head init, then seeds
    python scripts/sweep_adaptation.py retriever DATA_DIR OUT    # grouped Fin-Eva, multi-epoch, early stopping
    python scripts/sweep_adaptation.py tasks     DATA_DIR OUT    # the chosen classifier on event and SC_2, seeds
    python scripts/sweep_adaptation.py tables    -        OUT    # markdown -> OUT/<sweep>.md

DATA_DIR is the public data folder (``FINBERT2_PUBLIC_DATA``). Every choice is made on validation data and by
the metric users care about: pretraining recipes by the continued encoder's zero-shot nDCG@10 on the Fin-Eva
validation split and a linear probe's macro-F1 on CFBenchmark sentiment validation (never by MLM loss alone,
which is read against the corpus's unigram cross-entropy); classifiers by validation macro-F1; retrievers by
validation nDCG@10. Test splits are never read, except by ``tasks``: it applies the recipe chosen on
sentiment, unchanged, to the other two classification tasks and scores their test splits once (the goals). Runs are sequential and skipped when their folder holds
``metrics.json``, so an interrupted sweep resumes. Sizes are environment variables (``MLM_STEPS``,
``CLS_MAX_LENGTH``, ``RET_EPOCHS``) so the sweep fits a 2-core CPU; on a GPU raise them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_recipes import REPO, fmt, metrics, run  # noqa: E402  (the runner and formatting the sweeps share)

from finbert2.training import read_loss_log  # noqa: E402

MLM_STEPS = int(os.environ.get("MLM_STEPS", "80"))
MLM_HEAD_WARMUP = int(os.environ.get("MLM_HEAD_WARMUP", "20"))
# (name, extra flags): the old recipe is the control every new cell is read against
MLM_GRID = [
    ("mlm_old_lr1e-4", ["--prior_bias", "false", "--head_warmup_steps", "0", "--learning_rate", "1e-4"]),
    ("mlm_new_enc2e-5", ["--head_warmup_steps", str(MLM_HEAD_WARMUP), "--learning_rate", "1e-3",
                         "--encoder_learning_rate", "2e-5"]),
    ("mlm_new_enc5e-6", ["--head_warmup_steps", str(MLM_HEAD_WARMUP), "--learning_rate", "1e-3",
                         "--encoder_learning_rate", "5e-6"]),
]
CLS_MAX_LENGTH = os.environ.get("CLS_MAX_LENGTH", "128")
CLS_EPOCHS = os.environ.get("CLS_EPOCHS", "6")
CLS_GRID = [(pooling, init) for pooling in ("cls", "mean") for init in ("random", "probe")]
CLS_SEEDS = [42, 43, 44]
CLS_TASKS = os.environ.get("CLS_TASKS", "cfb_event sc2").split()  # `tasks`: the chosen recipe beyond sentiment
RET_EPOCHS = os.environ.get("RET_EPOCHS", "4")  # one run of up to N epochs; early stopping ends it when flat
RET_EVAL_STEPS = os.environ.get("RET_EVAL_STEPS", "20")  # half an epoch of Fin-Eva at 16 queries a step
RET_LRS = os.environ.get("RET_LRS", "1e-5 3e-5 5e-5").split()
RET_GROUPS = [int(g) for g in os.environ.get("RET_GROUPS", "4 8").split()]  # later sizes run at the best rate only
# RetroMAE from e5 as converted: the old recipe (everything at one rate from step 1) against the headless start
RETROMAE_STEPS = int(os.environ.get("RETROMAE_STEPS", "40"))
RETROMAE_GRID = [
    ("retromae_old_lr2e-5", ["--prior_bias", "false", "--head_warmup_steps", "0", "--learning_rate", "2e-5"]),
    ("retromae_new_enc2e-5", ["--head_warmup_steps", "0.25", "--learning_rate", "1e-4", "--encoder_learning_rate", "2e-5"]),
    ("retromae_new_enc5e-6", ["--head_warmup_steps", "0.25", "--learning_rate", "1e-4", "--encoder_learning_rate", "5e-6"]),
]


# CELLS="mlm_new_enc5e-6 retromae_new_enc5e-6": run only the named cells of a pretraining grid (the rest of a
# sweep run elsewhere); BF16=false pins a precision, so cells added on a CPU with native bf16 are compared in the
# fp32 the earlier cells ran in on an AVX2 CPU (default: the configs' --bf16 auto).
CELLS = set(os.environ.get("CELLS", "").split())
BF16 = os.environ.get("BF16")


def chosen(grid: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """The grid's cells that CELLS names (all of them when CELLS is unset), each with the BF16 flag if set."""
    return [(name, flags + (["--bf16", BF16] if BF16 else [])) for name, flags in grid if not CELLS or name in CELLS]


def prepared(data_dir: Path, out: Path) -> Path:
    """Converted data as the mini reproduction's data step writes it (the same converters and seeds): the
    pretraining corpus (every classification test text and Fin-Eva held-out context left out), Fin-Eva with a
    validation split, CFBenchmark sentiment and event, SC_2, the JINGEWU headlines."""
    data = out / "data"
    if not (data / "metrics.json").is_file():
        data.mkdir(parents=True, exist_ok=True)
        subprocess.check_call([sys.executable, "-m", "finbert2.report.reproduction", "prepare-data", str(data_dir),
                               str(data), "--seed", "42", "--fineva_validation", "0.15"], cwd=REPO)
    return data


def general(out: Path, data: Path) -> Path:
    folder = out / "general"
    if not (folder / "metrics.json").is_file():
        subprocess.check_call(["finbert2", "convert", "multilingual-e5-small", str(folder), "--prune_vocab",
                               "--corpus", str(data / "corpus.jsonl")], cwd=REPO)
    return folder


def probe_macro_f1(model: Path, data: Path) -> dict:
    """A logistic regression on the encoder's frozen mean-pooled features (CFBenchmark sentiment): train -> validation."""
    cached = model / "probe_cfb_sentiment.json"
    if cached.is_file():
        return json.loads(cached.read_text("utf-8"))
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from finbert2.retrieve.encoder import DenseEncoder

    encoder = DenseEncoder.from_pretrained(str(model), pooling="mean", normalize=False, max_length=int(CLS_MAX_LENGTH))

    def split(name: str):
        rows = [json.loads(line) for line in (data / "cfb_sentiment" / f"{name}.jsonl").read_text("utf-8").splitlines()]
        return encoder.encode([r["text"] for r in rows]), [str(r["label"]) for r in rows]

    (x_train, y_train), (x_val, y_val) = split("train"), split("validation")
    probe = LogisticRegression(C=1.0, max_iter=3000).fit(x_train, y_train)
    result = {"probe_val_macro_f1": float(f1_score(y_val, probe.predict(x_val), average="macro"))}
    cached.write_text(json.dumps(result), encoding="utf-8")
    return result


def sweep_mlm(data_dir: Path, out: Path) -> None:
    data = prepared(data_dir, out)
    model = general(out, data)
    probe_macro_f1(model, data)
    for name, flags in chosen(MLM_GRID):
        folder = run(out, name, [
            "finbert2", "mlm", "configs/mlm/e5-small.yaml", "--model_name_or_path", str(model),
            "--train_data", str(data / "corpus.jsonl"), "--validation_split_percentage", "2",
            "--max_eval_samples", "128", "--max_seq_length", "128", "--per_device_train_batch_size", "16",
            "--max_steps", str(MLM_STEPS), "--eval_steps", str(MLM_STEPS // 2), "--save_steps", str(MLM_STEPS // 2),
            "--warmup_steps", "0.1", "--attention_dropout", "0", "--logging_steps", "5",
            "--eval_retrieval_data", str(data / "fineva" / "validation"), "--eval_retrieval_max_length", "256",
            "--seed", "42", "--disable_tqdm", "false", "--output_dir", str(out / name), *flags])
        probe_macro_f1(folder, data)


def sweep_classify(data_dir: Path, out: Path) -> None:
    data = prepared(data_dir, out)
    model = general(out, data)
    task = data / "cfb_sentiment"

    def train(pooling: str, init: str, seed: int, lr: str = "1e-4") -> Path:
        name = f"classify_{pooling}_{init}_lr{lr}_seed{seed}"
        return run(out, name, [
            "finbert2", "classify", "train", "configs/classify/e5-small.yaml", "--model_name_or_path", str(model),
            "--train_data", str(task / "train.jsonl"), "--eval_data", str(task / "validation.jsonl"),
            "--max_length", CLS_MAX_LENGTH, "--num_train_epochs", CLS_EPOCHS, "--pooling", pooling,
            "--head_init", init, "--learning_rate", lr, "--seed", str(seed), "--disable_tqdm", "false",
            "--output_dir", str(out / name)])

    for pooling, init in CLS_GRID:
        train(pooling, init, CLS_SEEDS[0])
    ranked = sorted(CLS_GRID, key=lambda cell: -metrics(out / f"classify_{cell[0]}_{cell[1]}_lr1e-4_seed42")
                    .get("eval_macro_f1", 0.0))
    for pooling, init in ranked[:2]:  # the chosen setting and the runner-up, over seeds
        for seed in CLS_SEEDS[1:]:
            train(pooling, init, seed)


def sweep_tasks(data_dir: Path, out: Path) -> None:
    """configs/classify/e5-small.yaml as chosen on sentiment (pooling from the folder, probe head), unchanged, on
    the other tasks over seeds, with TF-IDF + LR beside it; each run scores its test split once at the end."""
    data = prepared(data_dir, out)
    model = general(out, data)
    for task in CLS_TASKS:
        split = {name: str(data / task / f"{name}.jsonl") for name in ("train", "validation", "test")}
        common = ["--train_data", split["train"], "--eval_data", split["validation"], "--test_data", split["test"]]
        run(out, f"task_{task}_tfidf", ["finbert2", "classify", "baseline", "configs/classify/tiny.yaml", *common,
                                        "--output_dir", str(out / f"task_{task}_tfidf")])
        for seed in CLS_SEEDS:
            name = f"task_{task}_seed{seed}"
            run(out, name, ["finbert2", "classify", "train", "configs/classify/e5-small.yaml", *common,
                            "--model_name_or_path", str(model), "--max_length", CLS_MAX_LENGTH,
                            "--num_train_epochs", CLS_EPOCHS, "--seed", str(seed), "--disable_tqdm", "false",
                            "--output_dir", str(out / name)])


def sweep_retriever(data_dir: Path, out: Path) -> None:
    data = prepared(data_dir, out)
    model = general(out, data)
    mined = run(out, "retriever_mined", [  # 7 negatives a row: group 8 takes them all, group 4 samples 3 each epoch
        "finbert2", "retrieve", "mine", "--model_name_or_path", str(model),
        "--input_file", str(data / "fineva" / "train.jsonl"), "--range_for_sampling", "3-100",
        "--negative_number", "7", "--margin", "0.02", "--fill_random", "true", "--max_length", "256",
        "--seed", "42", "--output_dir", str(out / "retriever_mined")])

    def train(lr: str, group: int) -> Path:
        name = f"retriever_lr{lr}_g{group}"
        return run(out, name, [
            "finbert2", "retrieve", "train", "configs/retriever/e5-small.yaml", "--model_name_or_path", str(model),
            "--train_data", str(mined / "train.jsonl"), "--eval_data", str(data / "fineva" / "validation"),
            "--learning_rate", lr, "--num_train_epochs", RET_EPOCHS, "--train_group_size", str(group),
            "--eval_steps", RET_EVAL_STEPS, "--save_steps", RET_EVAL_STEPS, "--early_stopping_patience", "3",
            "--attention_dropout", "0", "--seed", "42", "--disable_tqdm", "false", "--output_dir", str(out / name)])

    for lr in RET_LRS:
        train(lr, RET_GROUPS[0])
    best = max(RET_LRS, key=lambda lr: metrics(out / f"retriever_lr{lr}_g{RET_GROUPS[0]}").get("best_metric", 0.0))
    for group in RET_GROUPS[1:]:
        train(best, group)


def sweep_retromae(data_dir: Path, out: Path) -> None:
    """RetroMAE's new heads (encoder MLM head and decoder) from e5, scored by the encoder's zero-shot retrieval."""
    data = prepared(data_dir, out)
    model = general(out, data)
    for name, flags in chosen(RETROMAE_GRID):
        folder = run(out, name, [
            "finbert2", "retromae", "configs/retromae/e5-small.yaml", "--model_name_or_path", str(model),
            "--train_data", str(data / "corpus.jsonl"), "--validation_split_percentage", "2",
            "--max_eval_samples", "128", "--max_seq_length", "256", "--per_device_train_batch_size", "16",
            "--max_steps", str(RETROMAE_STEPS), "--eval_steps", str(RETROMAE_STEPS // 2),
            "--save_steps", str(RETROMAE_STEPS // 2), "--warmup_steps", "0.1", "--attention_dropout", "0",
            "--logging_steps", "5", "--eval_retrieval_data", str(data / "fineva" / "validation"),
            "--eval_retrieval_max_length", "256", "--seed", "42", "--disable_tqdm", "false",
            "--output_dir", str(out / name), *flags])
        probe_macro_f1(folder, data)


def mlm_table(out: Path) -> str:
    base = out / "general"
    lines = ["| recipe | held-out MLM loss (start -> end) | unigram CE | zero-shot val nDCG@10 (start -> end) | "
             "probe val macro-F1 | sentence cosine | damage guard | s/step |", "|---|---|---|---|---|---|---|---|"]
    probe = json.loads((base / "probe_cfb_sentiment.json").read_text("utf-8")) if (base / "probe_cfb_sentiment.json").is_file() else {}
    lines.append(f"| e5-small as converted | - | - | - | {fmt(probe.get('probe_val_macro_f1'))} | - | - | - |")
    for name, _ in MLM_GRID:
        m = metrics(out / name)
        if not m:
            continue
        p = json.loads((out / name / "probe_cfb_sentiment.json").read_text("utf-8")) \
            if (out / name / "probe_cfb_sentiment.json").is_file() else {}
        lines.append(f"| {name} | {fmt(m.get('initial_eval_loss'), 3)} -> {fmt(m.get('eval_loss'), 3)} | "
                     f"{fmt(m.get('unigram_cross_entropy'), 3)} | {fmt(m.get('initial_eval_ndcg_at_10'))} -> "
                     f"{fmt(m.get('eval_ndcg_at_10'))} | {fmt(p.get('probe_val_macro_f1'))} | "
                     f"{fmt(m.get('sentence_mean_cosine'), 3)} | {'fired' if m.get('embedding_damaged') else 'quiet'} | "
                     f"{fmt((m.get('train_runtime') or 0) / max(m.get('global_step') or 1, 1), 1)} |")
    return "\n".join(lines)


def classify_table(out: Path) -> str:
    lines = ["| pooling | head init | seed | untrained (or probe) val macro-F1 | val macro-F1 | best step | "
             "collapsed | s |", "|---|---|---|---|---|---|---|---|"]
    for folder in sorted(out.glob("classify_*")):
        m = metrics(folder)
        if m:
            lines.append(f"| {m.get('pooling')} | {m.get('head_init')} | {folder.name.rsplit('seed', 1)[1]} | "
                         f"{fmt(m.get('initial_eval_macro_f1'))} | {fmt(m.get('eval_macro_f1'))} | "
                         f"{m.get('best_checkpoint_step')} | {m.get('collapsed')} | {fmt(m.get('total_seconds'), 0)} |")
    return "\n".join(lines)


def tasks_table(out: Path) -> str:
    """Per task: the untrained start (the probe), TF-IDF + LR, each seed and the seed mean +- std, on test."""
    import statistics

    lines = ["| task | model | seed | val macro-F1 | test macro-F1 | test accuracy | best step | s |",
             "|---|---|---|---|---|---|---|---|"]
    for task in CLS_TASKS:
        runs = [(folder, metrics(folder)) for folder in sorted(out.glob(f"task_{task}_seed*"))]
        runs = [(folder, m) for folder, m in runs if m]
        baseline = metrics(out / f"task_{task}_tfidf")
        if runs:  # the chance row and the untrained start (the linear probe the head starts from; seed-free)
            first = runs[0][1]
            lines.append(f"| {task} | majority class (chance) | - | {fmt(first.get('eval_majority_macro_f1'))} | "
                         f"{fmt(first.get('test_majority_macro_f1'))} | - | - | - |")
            lines.append(f"| {task} | e5-small frozen + probe (LP, the start) | - | "
                         f"{fmt(first.get('probe_eval_macro_f1'))} | {fmt(first.get('probe_test_macro_f1'))} | "
                         f"{fmt(first.get('probe_test_accuracy'))} | 0 | - |")
        if baseline:
            lines.append(f"| {task} | TF-IDF + LR | - | {fmt(baseline.get('eval_macro_f1'))} | "
                         f"{fmt(baseline.get('test_macro_f1'))} | {fmt(baseline.get('test_accuracy'))} | - | - |")
        for folder, m in runs:
            lines.append(f"| {task} | e5-small fine-tuned | "
                         f"{folder.name.rsplit('seed', 1)[1]} | {fmt(m.get('eval_macro_f1'))} | "
                         f"{fmt(m.get('test_macro_f1'))} | {fmt(m.get('test_accuracy'))} | "
                         f"{m.get('best_checkpoint_step')} | {fmt(m.get('total_seconds'), 0)} |")
        scores = [m["test_macro_f1"] for _, m in runs if m.get("test_macro_f1") is not None]
        if len(scores) > 1:
            lines.append(f"| {task} | e5-small, seed mean +- std | {len(scores)} | - | "
                         f"**{statistics.mean(scores):.4f} +- {statistics.stdev(scores):.4f}** | - | - | - |")
    return "\n".join(lines)


def retriever_table(out: Path) -> str:
    lines = ["| lr | group | val nDCG@10 start | best | at step (epoch) | steps run | passage cosine | s/step | peak GB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for folder in sorted(out.glob("retriever_lr*")):
        m = metrics(folder)
        if m:
            log = read_loss_log(folder / "loss_log.csv") if (folder / "loss_log.csv").is_file() else {}
            steps = max((step for points in log.values() for step, _ in points), default=1)
            best_step = int(m.get("best_model_checkpoint", "-0").rsplit("-", 1)[-1])
            lines.append(f"| {folder.name.split('_')[1][2:]} | {m.get('train_group_size')} | "
                         f"{fmt(m.get('initial_eval_ndcg_at_10'))} | {fmt(m.get('best_metric'))} | "
                         f"{best_step} ({best_step / max(steps, 1) * (m.get('epoch') or 0):.1f}) | {steps} | "
                         f"{fmt(m.get('passage_mean_cosine'), 3)} | "
                         f"{fmt((m.get('train_runtime') or 0) / max(steps, 1), 1)} | "
                         f"{fmt((m.get('peak_memory_mb') or 0) / 1024, 1)} |")
    plot_validation_curves(sorted(out.glob("retriever_lr*")), out / "retriever_curves.png",
                           "Fin-Eva validation nDCG@10 while fine-tuning e5-small")
    return "\n".join(lines)


def retromae_table(out: Path) -> str:
    base = out / "general"
    probe = json.loads((base / "probe_cfb_sentiment.json").read_text("utf-8")) \
        if (base / "probe_cfb_sentiment.json").is_file() else {}
    lines = ["| recipe | held-out loss start -> end | zero-shot val nDCG@10 start -> mid -> end | probe val macro-F1 | "
             "sentence cosine | damage guard | s/step | peak GB |", "|---|---|---|---|---|---|---|---|",
             f"| e5-small as converted | - | - | {fmt(probe.get('probe_val_macro_f1'))} | - | - | - | - |"]
    for name, _ in RETROMAE_GRID:
        m = metrics(out / name)
        if not m:
            continue
        p = json.loads((out / name / "probe_cfb_sentiment.json").read_text("utf-8")) \
            if (out / name / "probe_cfb_sentiment.json").is_file() else {}
        curve = [v for _, v in read_loss_log(out / name / "loss_log.csv").get("eval_ndcg_at_10", [])] \
            if (out / name / "loss_log.csv").is_file() else []
        lines.append(f"| {name} | {fmt(m.get('initial_eval_loss'), 2)} -> {fmt(m.get('eval_loss'), 2)} | "
                     f"{' -> '.join(fmt(v) for v in [m.get('initial_eval_ndcg_at_10'), *curve])} | "
                     f"{fmt(p.get('probe_val_macro_f1'))} | {fmt(m.get('sentence_mean_cosine'), 3)} | "
                     f"{'fired' if m.get('embedding_damaged') else 'quiet'} | "
                     f"{fmt((m.get('train_runtime') or 0) / max(m.get('global_step') or 1, 1), 1)} | "
                     f"{fmt((m.get('peak_memory_mb') or 0) / 1024, 1)} |")
    return "\n".join(lines)


def plot_validation_curves(folders: list[Path], path: Path, title: str, metric: str = "eval_ndcg_at_10") -> None:
    """One line per run from its loss_log.csv, the untrained start as step 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for folder in folders:
        m = metrics(folder)
        points = read_loss_log(folder / "loss_log.csv").get(metric, []) if (folder / "loss_log.csv").is_file() else []
        if not m or not points:
            continue
        steps, values = zip(*[(0, m.get(f"initial_{metric}")), *points])
        ax.plot(steps, values, marker="o", markersize=3, label=folder.name)
    ax.set_xlabel("step (16 queries)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", choices=["mlm", "retromae", "classify", "retriever", "tasks", "tables"])
    parser.add_argument("data_dir", type=Path, help="public data folder (FINBERT2_PUBLIC_DATA); '-' for tables")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.sweep == "tables":
        for name, table in (("mlm", mlm_table), ("retromae", retromae_table), ("classify", classify_table),
                            ("retriever", retriever_table), ("tasks", tasks_table)):
            (args.out / f"{name}.md").write_text(table(args.out) + "\n", encoding="utf-8")
            print(f"## {name}\n\n{table(args.out)}\n")
        return 0
    {"mlm": sweep_mlm, "retromae": sweep_retromae, "classify": sweep_classify,
     "retriever": sweep_retriever, "tasks": sweep_tasks}[args.sweep](args.data_dir, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
