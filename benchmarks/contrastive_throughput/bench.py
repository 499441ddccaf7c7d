"""Contrastive fine-tuning steps/s: ``finbert2 retrieve train`` against FlagEmbedding's encoder-only embedder runner.

    python benchmarks/contrastive_throughput/bench.py --size e5-small  --steps 40
    python benchmarks/contrastive_throughput/bench.py --size bert-base --steps 30

Both sides in this one process, one after the other, from the same model folder (``--size``; see
``common.SIZE_HELP``), the same training rows (data/demo/retrieval/train.jsonl), group size, batch,
query/passage max lengths, prompts (the folder's), pooling (the folder's: e5 mean, scratch BERT cls),
L2 normalisation, temperature, learning rate, schedule (constant, no warmup, no weight decay),
seed and precision:

- ours: ``finbert2.retrieve.cli.main(["train", ...])``, i.e. ``finbert2 retrieve train`` (its
  ``RetrieverTrainer`` gets one extra callback, the step timer);
- peer: FlagEmbedding 1.4's ``EncoderOnlyEmbedderRunner`` built from its own argument dataclasses,
  parsed with ``HfArgumentParser`` exactly as ``python -m FlagEmbedding.finetune.embedder.encoder_only.base``
  does, then ``runner.run()`` (the timer added with ``runner.trainer.add_callback``).

So that the two loss curves can be compared step by step, the benchmark (by default) makes the runs
deterministic and identical in what they see: every row keeps exactly ``group_size - 1`` negatives
(its first ones; with exactly that many, both samplers draw the same set, and InfoNCE does not depend on
the negatives' order), and the encoder's dropout is set to 0 in a copy of the folder (each side's
dropout would otherwise draw different masks), and rows are kept only while every query and passage
text in them is new to the data: a text twice in a batch is an in-batch false negative, which our loss
leaves out of the softmax and FlagEmbedding's scores as a negative (intended; on the full demo rows it
made our loss up to 87% lower late in training, where the losses are small). ``--keep_negatives`` /
``--keep_dropout`` / ``--keep_duplicates`` turn these off.
Speed: optimizer steps per second over the steps after ``--warmup``. The side that runs first in a
process measured 15-30% slower than the same run made second (first-touch memory costs), so each side
runs ``--rounds`` times (default 2), the order reversed every round (ours, peer, peer, ours), and its
fastest round counts; every round's figure is in the record. ``--speed_options`` adds a third side,
ours with ``--attention_dropout 0 --freeze_word_embeddings True`` (meaningful with ``--keep_dropout``:
without it dropout is already off; its loss curve differs by design, frozen embeddings). Losses: every step's logged
training loss of both sides, and whether the first 20 agree within 1% (relative). Precisions: fp32, and
bf16 (``--bf16 True`` of both, the Trainer's autocast) where the CPU has native bf16.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common
from transformers import TrainerCallback

TRAIN = common.REPO / "data" / "demo" / "retrieval" / "train.jsonl"


class StepTimer(TrainerCallback):
    """Step end times and logged losses; with ``profile_steps``, a torch.profiler table of the steps after ``warmup``."""

    def __init__(self, warmup: int = 0, profile_steps: int = 0):
        self.ends: list[float] = []
        self.losses: dict[int, float] = {}
        self.warmup, self.profile_steps = warmup, profile_steps
        self.profiler, self.profile_table = None, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        if self.profile_steps and state.global_step == self.warmup:
            from torch.profiler import ProfilerActivity, profile

            self.profiler = profile(activities=[ProfilerActivity.CPU])
            self.profiler.start()
        elif self.profiler is not None and state.global_step == self.warmup + self.profile_steps:
            self.profiler.stop()
            self.profile_table = self.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
            self.profiler = None
        self.ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = float(logs["loss"])

    def summary(self, warmup: int) -> dict:
        steps = len(self.ends) - 1
        timed = self.ends[warmup:]
        return {"steps": steps, "timed_steps": len(timed) - 1,
                "steps_per_second": (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else float("nan"),
                "total_seconds": self.ends[-1] - self.ends[0],
                "losses": [self.losses[s] for s in sorted(self.losses)], "profile": self.profile_table}


def prepare(folder: Path, work: Path, opts) -> tuple[Path, Path]:
    """The model folder (dropout 0 unless --keep_dropout) and the training rows (exact group size unless --keep_negatives)."""
    if not opts.keep_dropout:
        copy = work / "model"
        shutil.copytree(folder, copy)
        config = json.loads((copy / "config.json").read_text(encoding="utf-8"))
        config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        (copy / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        folder = copy
    rows = [json.loads(line) for line in TRAIN.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not opts.keep_negatives:
        rows = [{**r, "neg": r["neg"][: opts.group_size - 1]} for r in rows]
        short = [i for i, r in enumerate(rows) if len(r["neg"]) < opts.group_size - 1]
        if short:
            raise SystemExit(f"{len(short)} rows have fewer than {opts.group_size - 1} negatives: lower --group_size")
    if not opts.keep_duplicates:
        rows = rows_without_repeated_texts(rows)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return folder, data


def rows_without_repeated_texts(rows: list[dict]) -> list[dict]:
    """The rows, in order, whose query and passages (all distinct) appear in no earlier kept row."""
    seen, kept = set(), []
    for row in rows:
        texts = [row["query"], *row["pos"], *row["neg"]]
        if len(set(texts)) == len(texts) and not seen.intersection(texts):
            kept.append(row)
            seen.update(texts)
    return kept


def shared_flags(folder: Path, data: Path, out: Path, opts, precision: str, query_prompt: str,
                 passage_prompt: str) -> list[str]:
    """The flags both command lines share (same names in finbert2 and FlagEmbedding)."""
    return ["--model_name_or_path", str(folder), "--train_data", str(data), "--output_dir", str(out),
            "--train_group_size", str(opts.group_size), "--query_max_len", str(opts.query_max_len),
            "--passage_max_len", str(opts.passage_max_len), "--temperature", str(opts.temperature),
            "--learning_rate", str(opts.learning_rate), "--lr_scheduler_type", "constant", "--warmup_steps", "0",
            "--weight_decay", "0", "--per_device_train_batch_size", str(opts.batch_size),
            "--max_steps", str(opts.warmup + opts.steps), "--logging_steps", "1", "--save_strategy", "no",
            "--seed", str(opts.seed), "--dataloader_num_workers", "0", "--dataloader_drop_last", "True",
            "--report_to", "none", "--use_cpu", "True", "--bf16", str(precision == "bf16"),
            "--query_instruction_for_retrieval", query_prompt, "--passage_instruction_for_retrieval", passage_prompt,
            "--disable_tqdm", "True"]


SPEED_OPTIONS = common.stage_flags(common.SPEED_OPTIONS)


def run_ours(flags: list[str], pooling: str, opts) -> dict:
    import finbert2.retrieve.trainer as retriever_trainer
    from finbert2.retrieve.cli import main as retrieve

    timer = StepTimer(opts.warmup, opts.profile_steps)
    original = retriever_trainer.RetrieverTrainer

    class TimedRetrieverTrainer(original):
        def __init__(self, *args, callbacks=None, **kwargs):
            super().__init__(*args, callbacks=[*(callbacks or []), timer], **kwargs)

    retriever_trainer.RetrieverTrainer = TimedRetrieverTrainer
    try:
        assert retrieve(["train", *flags, "--pooling", pooling, "--normalized", "True"]) == 0
    finally:
        retriever_trainer.RetrieverTrainer = original
    return timer.summary(opts.warmup)


def run_flagembedding(flags: list[str], pooling: str, opts) -> dict:
    from FlagEmbedding.finetune.embedder.encoder_only.base import (
        EncoderOnlyEmbedderDataArguments,
        EncoderOnlyEmbedderModelArguments,
        EncoderOnlyEmbedderRunner,
        EncoderOnlyEmbedderTrainingArguments,
    )
    from transformers import HfArgumentParser

    parser = HfArgumentParser((EncoderOnlyEmbedderModelArguments, EncoderOnlyEmbedderDataArguments,
                               EncoderOnlyEmbedderTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(
        args=[*flags, "--sentence_pooling_method", pooling, "--normalize_embeddings", "True"])
    runner = EncoderOnlyEmbedderRunner(model_args=model_args, data_args=data_args, training_args=training_args)
    timer = StepTimer(opts.warmup, opts.profile_steps)
    runner.trainer.add_callback(timer)
    runner.run()
    return timer.summary(opts.warmup)


def compare(ours: list[float], peer: list[float], steps: int = 20, tolerance: float = 0.01) -> dict:
    n = min(steps, len(ours), len(peer))
    rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours[:n], peer[:n])]
    agree = None if n < steps else max(rel) <= tolerance  # None: fewer than 20 steps were run
    return {"compared_steps": n, "max_relative_difference": max(rel) if rel else None,
            "first_20_agree_within_1_percent": agree}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser)
    parser.add_argument("--steps", type=int, default=40, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--group_size", type=int, default=4, help="1 positive + group_size-1 negatives (demo rows have >= 3)")
    parser.add_argument("--query_max_len", type=int, default=64)
    parser.add_argument("--passage_max_len", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--learning_rate", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep_negatives", action="store_true", help="all negatives: each side samples its own groups")
    parser.add_argument("--profile_steps", type=int, default=0,
                        help="profile this many steps after --warmup on each side (torch.profiler)")
    parser.add_argument("--profile_out", type=Path, default=None, help="where the profile tables go (markdown)")
    parser.add_argument("--peer_first", action="store_true",
                        help="run FlagEmbedding before ours (the side run first pays the process's first-touch costs)")
    parser.add_argument("--keep_duplicates", action="store_true",
                        help="keep rows that repeat a text (our loss masks such in-batch false negatives, FlagEmbedding not)")
    parser.add_argument("--keep_dropout", action="store_true", help="the folder's dropout (curves then differ by noise)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of each side, the order reversed every round; the fastest counts")
    parser.add_argument("--speed_options", action="store_true",
                        help="a third side: ours with " + " ".join(SPEED_OPTIONS))
    opts = parser.parse_args()

    info = common.print_header()
    from finbert2.retrieve.encoder import resolve_prompts, saved_sentence_settings

    work = common.work_dir("contrastive_bench_")
    try:
        source = common.model_folder(opts.size, work, "encoder")
        folder, data = prepare(source, work, opts)
        query_prompt, passage_prompt = resolve_prompts(str(source), None, None)
        pooling = saved_sentence_settings(str(source)).get("pooling", "cls")
        rows = []
        sides = [("ours", run_ours, []), ("flagembedding", run_flagembedding, [])]
        if opts.peer_first:
            sides.reverse()
        if opts.speed_options:
            sides.append(("ours_speed_options", run_ours, SPEED_OPTIONS))
        for precision in common.precisions(opts.bf16):
            row = {"precision": precision}
            runs = {side: [] for side, _, _ in sides}
            for round_index in range(opts.rounds):
                for side, run, extra in (sides if round_index % 2 == 0 else sides[::-1]):
                    out = work / f"{side}-{precision}-{round_index}"
                    flags = shared_flags(folder, data, out, opts, precision, query_prompt, passage_prompt) + extra
                    try:
                        result = run(flags, pooling, opts)
                    except Exception as err:  # noqa: BLE001 - a peer that cannot run is a result, recorded
                        result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
                    shutil.rmtree(out, ignore_errors=True)
                    runs[side].append(result)
                    print(side, precision, f"round {round_index + 1}",
                          {k: v for k, v in result.items() if k not in ("traceback", "profile")}, flush=True)
            for side, results in runs.items():
                timed = [r for r in results if "steps_per_second" in r]
                row[side] = max(timed, key=lambda r: r["steps_per_second"]) if timed else results[0]
                row[side]["steps_per_second_by_round"] = [r.get("steps_per_second") for r in results]
                row[side]["profile"] = next((r.get("profile") for r in results if r.get("profile")), None)
            if "steps_per_second" in row["ours"] and "steps_per_second" in row["flagembedding"]:
                row["ratio_steps_per_second"] = row["ours"]["steps_per_second"] / row["flagembedding"]["steps_per_second"]
                row["loss_agreement"] = compare(row["ours"]["losses"], row["flagembedding"]["losses"])
                speed = row.get("ours_speed_options", {})
                if "steps_per_second" in speed:
                    row["ratio_speed_options_steps_per_second"] = (speed["steps_per_second"]
                                                                   / row["flagembedding"]["steps_per_second"])
                    row["speed_options_loss_agreement"] = compare(speed["losses"], row["flagembedding"]["losses"])
            rows.append(row)
        record = {"benchmark": "contrastive_throughput", "machine": info, "size": opts.size,
                  "model": common.size_description(opts.size), "train_data": str(TRAIN.relative_to(common.REPO)),
                  "deterministic_groups": not opts.keep_negatives, "peer_first": opts.peer_first,
                  "rounds": opts.rounds, "order": "reversed every round; each side's fastest round counts",
                  "speed_options": SPEED_OPTIONS if opts.speed_options else None,
                  "train_rows": sum(1 for _ in data.open(encoding="utf-8")),
                  "repeated_texts_dropped": not opts.keep_duplicates, "dropout_off": not opts.keep_dropout,
                  "group_size": opts.group_size, "batch_size": opts.batch_size, "query_max_len": opts.query_max_len,
                  "passage_max_len": opts.passage_max_len, "temperature": opts.temperature,
                  "learning_rate": opts.learning_rate, "seed": opts.seed, "pooling": pooling,
                  "query_prompt": query_prompt, "passage_prompt": passage_prompt, "rows": rows}
        profiles = [(f"{side}, {r['precision']}", r[side].pop("profile", None)) for r in rows
                    for side, _, _ in sides]
        common.write_record(opts.output, record)
        if opts.profile_out and any(table for _, table in profiles):
            opts.profile_out.write_text("".join(f"## {name}: {opts.profile_steps} steps after {opts.warmup}\n\n```\n"
                                                f"{table}\n```\n\n" for name, table in profiles if table),
                                        encoding="utf-8")
        print("\n| size | precision | ours steps/s | FlagEmbedding steps/s | ratio | first 20 losses within 1% "
              "(max rel. diff) |\n|---|---|---:|---:|---:|---|")
        for r in rows:
            agree = r.get("loss_agreement", {})
            print(f"| {opts.size} | {r['precision']} | {r['ours'].get('steps_per_second', float('nan')):.3f} | "
                  f"{r['flagembedding'].get('steps_per_second', float('nan')):.3f} | "
                  f"**{r.get('ratio_steps_per_second', float('nan')):.2f}x** | "
                  f"{agree.get('first_20_agree_within_1_percent')} ({agree.get('max_relative_difference')} over "
                  f"{agree.get('compared_steps')} steps) |")
            if "ratio_speed_options_steps_per_second" in r:
                speed_agree = r["speed_options_loss_agreement"]
                print(f"| {opts.size} + speed options | {r['precision']} | "
                      f"{r['ours_speed_options']['steps_per_second']:.3f} | "
                      f"{r['flagembedding']['steps_per_second']:.3f} | "
                      f"**{r['ratio_speed_options_steps_per_second']:.2f}x** | "
                      f"{speed_agree.get('first_20_agree_within_1_percent')} "
                      f"({speed_agree.get('max_relative_difference')}) |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
