"""Two small validation-only hyper-parameter sweeps for fine-tuning multilingual-e5-small.

    export FINBERT2_CACHE=/tmp/fbcache
    python scripts/sweep_e5_small.py split                   # Fin-Eva train -> train + validation folder
    python scripts/sweep_e5_small.py classify [--max_length 256]
    python scripts/sweep_e5_small.py zeroshot
    python scripts/sweep_e5_small.py probe                   # seconds per retriever step
    python scripts/sweep_e5_small.py retrieve --max_steps N --eval_steps E
    python scripts/sweep_e5_small.py tables                  # markdown tables -> <root>/tables.md

Every choice is made on validation metrics (eval_*). The CFBenchmark test split is only passed as
--test_data so that it is reported; the Fin-Eva held-out test folder is not used at all.
Runs are sequential (one training process at a time); a run whose folder already holds
metrics.json is skipped, so the script can be re-run after an interruption.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path("/tmp/sw/sweeps")
MODEL = "/tmp/e5pruned"
CFB = Path("/tmp/sw/cfb")
FINEVA_TRAIN = Path("/tmp/sw/fineva/train.jsonl")
SPLIT_DIR = ROOT / "fineva_split"
CACHE = "/tmp/fbcache"

CLASSIFY_LRS = ["2e-5", "5e-5", "1e-4"]
RETRIEVE_GRID = [("1e-5", "0.02", "mean"), ("3e-5", "0.02", "mean"), ("1e-4", "0.02", "mean"),
                 ("3e-5", "0.05", "mean"), ("3e-5", "0.02", "cls")]
TRAIN_GROUP_SIZE = 4


# ----------------------------------------------------------------------------- helpers

def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def context_id(context: str) -> str:
    """The id scheme of the Fin-Eva converter (so ids match its eval folder)."""
    from finbert2.converters.fin_eva import context_id as converter_id
    return converter_id(context)


# ----------------------------------------------------------------------------- step 1: split

def split_fineva(train_path: Path = FINEVA_TRAIN, output_dir: Path = SPLIT_DIR, val_fraction: float = 0.15,
                 seed: int = 42, min_negatives: int = TRAIN_GROUP_SIZE - 1) -> dict:
    """Split retriever training rows by positive context into train.jsonl + a validation folder.

    Rows are grouped by ``pos[0]``; a seeded ``val_fraction`` of the groups goes to validation.
    ``val/corpus.jsonl`` holds every distinct context of ``train_path`` (pos and neg; the training
    contexts act as distractors), ``val/test_queries.jsonl`` the validation rows' queries (deduplicated
    by text) and ``val/test_qrels.jsonl`` their positives. Validation contexts never appear as a
    positive in the new train.jsonl; they are also removed from its negatives (so no validation passage
    is seen in training at all), topping a row up with random training contexts if fewer than
    ``min_negatives`` would remain.
    """
    rows = read_jsonl(train_path)
    contexts: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for text in [*row["pos"], *row.get("neg", [])]:
            if text not in seen:
                seen.add(text)
                contexts.append(text)

    groups = sorted({row["pos"][0] for row in rows})
    rng = random.Random(seed)
    order = groups[:]
    rng.shuffle(order)
    n_val = max(1, round(len(order) * val_fraction))
    val_contexts = set(order[:n_val])

    val_rows = [r for r in rows if r["pos"][0] in val_contexts]
    train_rows_in = [r for r in rows if r["pos"][0] not in val_contexts]
    train_positives = sorted({p for r in train_rows_in for p in r["pos"]} - val_contexts)

    train_rows, negatives_removed, rows_topped_up = [], 0, 0
    for row in train_rows_in:
        pos = [p for p in row["pos"] if p not in val_contexts]  # pos[0] is a train context by construction
        neg = [n for n in row.get("neg", []) if n not in val_contexts]
        negatives_removed += len(row.get("neg", [])) - len(neg)
        if len(neg) < min_negatives:
            pool = [c for c in train_positives if c not in pos and c not in neg]
            neg += rng.sample(pool, min_negatives - len(neg))
            rows_topped_up += 1
        train_rows.append({"query": row["query"], "pos": pos, "neg": neg})

    query_ids: dict[str, str] = {}
    queries, qrels = [], {}
    for row in val_rows:
        q = row["query"]
        if q not in query_ids:
            query_ids[q] = f"v{len(query_ids):05d}"
            queries.append({"id": query_ids[q], "text": q})
        for p in row["pos"]:
            qrels[(query_ids[q], context_id(p))] = {"qid": query_ids[q], "docid": context_id(p), "relevance": 1}
    corpus = [{"id": context_id(c), "title": "", "text": c} for c in contexts]

    # checks
    assert len({c["id"] for c in corpus}) == len(corpus), "context id collision"
    assert not ({p for r in train_rows for p in r["pos"]} & val_contexts), "validation context used as a positive"
    assert not ({n for r in train_rows for n in r["neg"]} & val_contexts), "validation context used as a negative"
    corpus_ids = {c["id"] for c in corpus}
    assert all(q["docid"] in corpus_ids for q in qrels.values())

    write_jsonl(output_dir / "train.jsonl", train_rows)
    write_jsonl(output_dir / "val" / "corpus.jsonl", corpus)
    write_jsonl(output_dir / "val" / "test_queries.jsonl", queries)
    write_jsonl(output_dir / "val" / "test_qrels.jsonl", qrels.values())
    train_queries = {r["query"] for r in train_rows}
    info = {"source": str(train_path), "seed": seed, "val_fraction": val_fraction,
            "rows": len(rows), "groups": len(groups), "val_groups": len(val_contexts),
            "train_rows": len(train_rows), "val_rows": len(val_rows), "val_queries": len(queries),
            "val_qrels": len(qrels), "corpus": len(corpus),
            "train_negatives_removed_as_val_contexts": negatives_removed,
            "train_rows_topped_up_with_random_negatives": rows_topped_up,
            "val_query_texts_also_in_train": sum(q["text"] in train_queries for q in queries)}
    (output_dir / "split.json").write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
    print(json.dumps(info, ensure_ascii=False))
    return info


# ----------------------------------------------------------------------------- running

def run(name: str, cmd: list[str], output_dir: Path | None) -> dict:
    """Run one command (sequentially), logging to <ROOT>/logs/<name>.log; record wall seconds."""
    logs = ROOT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    timing_path = ROOT / "timings.json"
    timings = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    if output_dir is not None and (output_dir / "metrics.json").exists():
        print(f"[skip] {name}: {output_dir}/metrics.json exists", flush=True)
        return timings.get(name, {})
    env = {**os.environ, "FINBERT2_CACHE": CACHE}
    print(f"[run] {name}: {' '.join(cmd)}", flush=True)
    started = time.time()
    with open(logs / f"{name}.log", "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd="/work/main")
    seconds = time.time() - started
    timings[name] = {"seconds": seconds, "rc": rc, "cmd": cmd}
    timing_path.write_text(json.dumps(timings, indent=2))
    print(f"[done] {name}: rc={rc} {seconds:.0f}s", flush=True)
    if rc != 0:
        print(f"[FAILED] {name}; see {logs / (name + '.log')}", flush=True)
    return timings[name]


def classify_dir(lr: str) -> Path:
    return ROOT / f"classify_lr{lr}"


def retrieve_dir(lr: str, t: str, pooling: str) -> Path:
    return ROOT / f"retrieve_lr{lr}_t{t}_{pooling}"


def classify_cmd(lr: str, max_length: int) -> list[str]:
    return ["finbert2", "classify", "train", "configs/classify/tiny.yaml",
            "--model_name_or_path", MODEL, "--tokenizer_name", MODEL,
            "--train_data", str(CFB / "train.jsonl"), "--eval_data", str(CFB / "validation.jsonl"),
            "--test_data", str(CFB / "test.jsonl"), "--max_length", str(max_length),
            "--num_train_epochs", "4", "--per_device_train_batch_size", "16", "--learning_rate", lr,
            "--warmup_steps", "0.1", "--early_stopping_patience", "0", "--eval_strategy", "epoch",
            "--save_strategy", "epoch", "--logging_steps", "5", "--seed", "42",
            "--output_dir", str(classify_dir(lr))]


def retriever_config() -> str:
    """configs/retriever/tiny.yaml without its ``query_instruction_for_retrieval`` line.

    tiny.yaml sets FinBERT2's Chinese query instruction (meant for its from-scratch demo encoder); a
    value in the config counts as "given", so it overrides the e5 folder's saved "query: " prompt
    (seen in the probe's run.log). Dropping that one key lets the prompts come from the model folder
    without passing --query_instruction_for_retrieval; every other setting is tiny.yaml's.
    """
    source = Path("/work/main/configs/retriever/tiny.yaml").read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in source if not line.lstrip().startswith("query_instruction_for_retrieval:")]
    assert len(kept) == len(source) - 1
    target = ROOT / "retriever_tiny_e5prompts.yaml"
    target.write_text("# generated by scripts/sweep_e5_small.py from configs/retriever/tiny.yaml "
                      "(query_instruction_for_retrieval removed)\n" + "".join(kept), encoding="utf-8")
    return str(target)


def retrieve_cmd(lr: str, t: str, pooling: str, output_dir: Path, max_steps: int | None, eval_steps: int,
                 eval_data: bool = True, config: str | None = None) -> list[str]:
    cmd = ["finbert2", "retrieve", "train", config or retriever_config(),
           "--model_name_or_path", MODEL, "--tokenizer_name", MODEL,
           "--train_data", str(SPLIT_DIR / "train.jsonl")]
    if eval_data:
        cmd += ["--eval_data", str(SPLIT_DIR / "val")]
    cmd += ["--train_group_size", str(TRAIN_GROUP_SIZE), "--query_max_len", "64", "--passage_max_len", "256",
            "--per_device_train_batch_size", "16", "--learning_rate", lr, "--temperature", t,
            "--pooling", pooling, "--warmup_steps", "0.1", "--weight_decay", "0.01", "--num_train_epochs", "1"]
    if max_steps:
        cmd += ["--max_steps", str(max_steps)]
    cmd += ["--eval_strategy", "steps", "--eval_steps", str(eval_steps), "--save_strategy", "steps",
            "--save_steps", str(eval_steps), "--logging_steps", "5", "--seed", "42", "--output_dir", str(output_dir)]
    return cmd


def sweep_classify(max_length: int) -> None:
    run("classify_baseline", ["finbert2", "classify", "baseline", "configs/classify/tiny.yaml",
                              "--train_data", str(CFB / "train.jsonl"), "--eval_data", str(CFB / "validation.jsonl"),
                              "--test_data", str(CFB / "test.jsonl"), "--output_dir", str(ROOT / "classify_baseline")],
        ROOT / "classify_baseline")
    for lr in CLASSIFY_LRS:
        info = run(f"classify_lr{lr}", classify_cmd(lr, max_length), classify_dir(lr))
        if info.get("rc", 0) != 0:
            return


def zeroshot() -> None:
    run("retrieve_zeroshot", ["finbert2", "retrieve", "evaluate", "--eval_data", str(SPLIT_DIR / "val"),
                              "--models", "bm25", MODEL, "--output_dir", str(ROOT / "retrieve_zeroshot")],
        ROOT / "retrieve_zeroshot")


def probe() -> None:
    """One 3-step run evaluating at step 3: seconds per step and per validation pass (from run.log)."""
    out = ROOT / "retrieve_probe"
    run("retrieve_probe", retrieve_cmd("3e-5", "0.02", "mean", out, 3, 3), out)
    metrics = json.loads((out / "metrics.json").read_text())
    print(json.dumps({k: metrics.get(k) for k in ("train_runtime", "train_steps", "total_seconds")}))


def sweep_retrieve(max_steps: int | None, eval_steps: int) -> None:
    for lr, t, pooling in RETRIEVE_GRID:
        out = retrieve_dir(lr, t, pooling)
        info = run(out.name, retrieve_cmd(lr, t, pooling, out, max_steps, eval_steps), out)
        if info.get("rc", 0) != 0:
            return


# ----------------------------------------------------------------------------- tables

def last_checkpoint_state(run_dir: Path) -> dict:
    checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not checkpoints:
        return {}
    return json.loads((checkpoints[-1] / "trainer_state.json").read_text())


def fmt(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        return f"{x:.{digits}f}" if math.isfinite(x) else str(x)
    return str(x)


def majority_macro_f1(labels: list, n_classes: int) -> float:
    from collections import Counter
    share = Counter(labels).most_common(1)[0][1] / len(labels)
    return (2 * share / (1 + share)) / n_classes


def classify_table() -> str:
    timings = json.loads((ROOT / "timings.json").read_text()) if (ROOT / "timings.json").exists() else {}
    lines = ["| lr | eval macro-F1 ep1 | ep2 | ep3 | ep4 | best epoch | best eval macro-F1 | eval accuracy "
             "| train_loss | seconds | (test macro-F1, not used) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for lr in CLASSIFY_LRS:
        d = classify_dir(lr)
        if not (d / "metrics.json").exists():
            lines.append(f"| {lr} | not run / failed |||||||||| ")
            continue
        m = json.loads((d / "metrics.json").read_text())
        state = last_checkpoint_state(d)
        per_epoch = {round(e["epoch"]): e["eval_macro_f1"] for e in state.get("log_history", []) if "eval_macro_f1" in e}
        f1s = [per_epoch.get(ep) for ep in (1, 2, 3, 4)]
        valid = [(f, ep) for ep, f in zip((1, 2, 3, 4), f1s) if f is not None]
        best_f1, best_ep = max(valid, key=lambda x: (x[0], -x[1])) if valid else (None, None)
        secs = m.get("total_seconds") or timings.get(d.name, {}).get("seconds")
        lines.append(f"| {lr} | " + " | ".join(fmt(f) for f in f1s) +
                     f" | {best_ep} | {fmt(best_f1)} | {fmt(m.get('eval_accuracy'))} | {fmt(m.get('train_loss'))} "
                     f"| {fmt(secs, 0)} | {fmt(m.get('test_macro_f1'))} |")
    val = read_jsonl(CFB / "validation.jsonl")
    train = read_jsonl(CFB / "train.jsonl")
    n_classes = len({r["label"] for r in train} | {r["label"] for r in val})
    lines.append("")
    lines.append(f"- majority-class macro-F1 on validation ({len(val)} rows): "
                 f"{majority_macro_f1([r['label'] for r in val], n_classes):.4f}")
    b = ROOT / "classify_baseline" / "metrics.json"
    if b.exists():
        bm = json.loads(b.read_text())
        lines.append(f"- TF-IDF baseline: eval_macro_f1 {fmt(bm.get('eval_macro_f1'))}, "
                     f"eval_accuracy {fmt(bm.get('eval_accuracy'))} (test_macro_f1 {fmt(bm.get('test_macro_f1'))}, not used)")
    return "\n".join(lines)


def retrieve_table() -> str:
    timings = json.loads((ROOT / "timings.json").read_text()) if (ROOT / "timings.json").exists() else {}
    lines = ["| model | lr | temperature | pooling | val nDCG@10 at each eval (step: value) | best val nDCG@10 "
             "| final train loss | chance_loss | passage_mean_cosine | collapsed | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    z = ROOT / "retrieve_zeroshot" / "metrics.json"
    if z.exists():
        zm = json.loads(z.read_text())
        for label in ("bm25", Path(MODEL).name):
            lines.append(f"| {label} (zero-shot) | – | – | {'–' if label == 'bm25' else 'mean'} | – "
                         f"| {fmt(zm.get(label + '_ndcg_at_10'))} | – | – | – | – | – |")
    for lr, t, pooling in RETRIEVE_GRID:
        d = retrieve_dir(lr, t, pooling)
        if not (d / "metrics.json").exists():
            lines.append(f"| {d.name} | {lr} | {t} | {pooling} | not run / failed |||||||")
            continue
        m = json.loads((d / "metrics.json").read_text())
        state = last_checkpoint_state(d)
        history = state.get("log_history", [])
        evals = [(e["step"], e["eval_ndcg_at_10"]) for e in history if "eval_ndcg_at_10" in e]
        losses = [e["loss"] for e in history if "loss" in e]
        # the final loss may come after the last checkpoint: prefer loss_log.csv when present
        csv = d / "loss_log.csv"
        if csv.exists():
            import csv as _csv
            with open(csv, encoding="utf-8") as f:
                rows = [r for r in _csv.DictReader(f) if r.get("loss")]
            if rows:
                losses = [float(r["loss"]) for r in rows]
        best = max((v for _, v in evals), default=None)
        secs = m.get("total_seconds") or timings.get(d.name, {}).get("seconds")
        lines.append(f"| e5 fine-tuned | {lr} | {t} | {pooling} | " + ", ".join(f"{s}: {v:.4f}" for s, v in evals) +
                     f" | {fmt(best)} | {fmt(losses[-1] if losses else None)} | {fmt(m.get('chance_loss'))} "
                     f"| {fmt(m.get('passage_mean_cosine'))} | {fmt(m.get('collapsed'))} | {fmt(secs, 0)} |")
    return "\n".join(lines)


def tables() -> None:
    text = "## Classification (CFBenchmark sentiment, validation)\n\n" + classify_table() + \
           "\n\n## Retriever (Fin-Eva train split by context, validation folder)\n\n" + retrieve_table() + "\n"
    (ROOT / "tables.md").write_text(text, encoding="utf-8")
    print(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("split")
    c = sub.add_parser("classify")
    c.add_argument("--max_length", type=int, default=256)
    sub.add_parser("zeroshot")
    sub.add_parser("probe")
    r = sub.add_parser("retrieve")
    r.add_argument("--max_steps", type=int, default=None)
    r.add_argument("--eval_steps", type=int, required=True)
    sub.add_parser("tables")
    args = parser.parse_args(argv)
    ROOT.mkdir(parents=True, exist_ok=True)
    if args.command == "split":
        split_fineva()
    elif args.command == "classify":
        sweep_classify(args.max_length)
    elif args.command == "zeroshot":
        zeroshot()
    elif args.command == "probe":
        probe()
    elif args.command == "retrieve":
        sweep_retrieve(args.max_steps, args.eval_steps)
    elif args.command == "tables":
        tables()
    return 0


if __name__ == "__main__":
    sys.exit(main())
