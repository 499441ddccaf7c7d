"""The accuracy cost of the MLM training-speed options: the same run with and without each, compared.

    python benchmarks/mlm_throughput/speed_options_accuracy.py --size e5-small --steps 60

Runs ``finbert2 pretrain mlm`` (the real stage: packed blocks, whole-word masking, masked-only head)
from the same weights, seed, data and held-out set once per variant: the defaults, ``--attention_dropout 0``,
``--freeze_word_embeddings True``, and both. Reports for each the held-out MLM loss before and after
training, the training tokens/s the stage measured, and the held-out sentence embeddings' mean cosine
(the stage's collapse check: near 1 means every sentence looks alike). Equal steps, so a faster option
that loses no held-out loss is a free gain; one that loses some has to win it back in the steps it saves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from bench import SPEED_OPTIONS  # the throughput benchmark's variants, as stage flags here

from finbert2.pretrain.mlm import main as pretrain_mlm

VARIANTS = {"defaults": [], **{name.removeprefix("ours_"): common.stage_flags(options)
                               for name, options in SPEED_OPTIONS.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser)
    parser.add_argument("--corpus", default=str(common.DEMO_CORPUS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--train_sequences", type=int, default=4000)
    parser.add_argument("--eval_sequences", type=int, default=256)
    opts = parser.parse_args()

    info = common.print_header()
    work = common.work_dir("mlmspeedacc_")
    folder = common.model_folder(opts.size, work, "mlm")
    stage_bf16 = {"auto": "auto", "on": "true", "off": "false"}[opts.bf16]  # the stage decides, as for users
    rows = []
    for name, flags in VARIANTS.items():
        out = work / name
        code = pretrain_mlm([
            "--model_name_or_path", str(folder), "--train_data", opts.corpus, "--output_dir", str(out),
            "--max_seq_length", str(opts.max_length), "--max_train_samples", str(opts.train_sequences),
            "--max_eval_samples", str(opts.eval_sequences), "--per_device_train_batch_size", str(opts.batch_size),
            "--per_device_eval_batch_size", "32", "--learning_rate", str(opts.learning_rate),
            "--warmup_steps", str(max(1, opts.steps // 10)), "--max_steps", str(opts.steps),
            "--logging_steps", "10", "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none",
            "--seed", "0", "--bf16", stage_bf16, "--disable_tqdm", "True", *flags,
        ])
        if code != 0:
            raise SystemExit(f"variant {name}: pretrain mlm exited {code}")
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        resolved = json.loads((out / "run_config.json").read_text(encoding="utf-8")).get("precision")
        rows.append({"variant": name, "flags": " ".join(flags), "precision": resolved, **{k: metrics.get(k) for k in (
            "initial_eval_loss", "eval_loss", "train_tokens_per_second", "train_runtime", "sentence_mean_cosine",
            "global_step")}})
        print(f"{name}: {rows[-1]}", flush=True)
    base = rows[0]
    for row in rows:
        row["speed_ratio_to_defaults"] = row["train_tokens_per_second"] / base["train_tokens_per_second"]
        row["eval_loss_change"] = row["eval_loss"] - base["eval_loss"]
    record = {"benchmark": "mlm_speed_options_accuracy", "machine": info, "size": opts.size,
              "model": common.size_description(opts.size),
              "steps": opts.steps, "batch_size": opts.batch_size, "max_length": opts.max_length,
              "learning_rate": opts.learning_rate, "eval_sequences": opts.eval_sequences, "rows": rows}
    common.write_record(opts.output, record)
    print("\n| size | variant | tokens/s | speed vs defaults | held-out MLM loss (start -> end) | change | "
          "sentence mean cosine |\n|---|---|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {opts.size} | {r['variant']} | {r['train_tokens_per_second']:.1f} | "
              f"{r['speed_ratio_to_defaults']:.2f}x | {r['initial_eval_loss']:.3f} -> {r['eval_loss']:.3f} | "
              f"{r['eval_loss_change']:+.3f} | {r['sentence_mean_cosine']:.3f} |")


if __name__ == "__main__":
    main()
