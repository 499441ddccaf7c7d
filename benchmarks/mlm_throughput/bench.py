"""MLM training throughput: finbert2's MLM against the transformers run_mlm.py default recipe, same model, data, machine.

    python benchmarks/mlm_throughput/bench.py --size e5-small  --steps 20 --rounds 2
    python benchmarks/mlm_throughput/bench.py --size bert-base --steps 10 --rounds 2

peer: the transformers ``examples/pytorch/language-modeling/run_mlm.py`` DEFAULT recipe: every document
      tokenized (``return_special_tokens_mask=True``), the token lists concatenated and cut into full
      ``--max_length`` blocks (its ``group_texts``, through ``datasets.map(batched=True)`` as there),
      ``AutoModelForMaskedLM`` (full-vocabulary logits), ``DataCollatorForLanguageModeling`` (15% token
      masking), ``Trainer``.
ours: finbert2's MLM as ``configs/mlm/*.yaml`` run it: documents packed into full blocks, jieba
      whole-word masking drawn per fetch, the MLM head on masked positions only
      (``BertForMaskedPositionsLM``). ``--ablations`` adds line by line (batches padded to their
      longest) and packed with full-vocabulary logits. ``--speed_options`` adds ours with the
      training-speed options of ``ModelArguments`` (``--attention_dropout 0``,
      ``--freeze_word_embeddings``, and both); their accuracy cost is measured by
      ``speed_options_accuracy.py`` beside this script.
Both go through the same ``Trainer`` loop, optimizer, batch and block length, from the same weights
(``--size``: multilingual-e5-small as converted by finbert2, or a seeded random 12 x 768 BERT over the
21,128-token bert-base-chinese vocab; ``tiny`` for smoke tests). Precisions: fp32, and bf16 (the
Trainer's ``bf16=True`` autocast on both sides) where the CPU has native bf16. Speed is real
(non-padding) tokens per second over the timed steps (the first ``--warmup`` steps excluded); rounds
alternate the variants and the median is reported. Model FLOPs utilisation (MFU) = achieved model
FLOP/s over the matmul peak measured in this run in the same precision (see ``common.FLOPS_FORMULA``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common

from finbert2.data import read_corpus
from finbert2.modeling import ModelArguments, load_model
from finbert2.pretrain.data import (
    EpochMaskedDataset,
    PretrainDataset,
    line_by_line_examples,
    packed_examples,
)
from finbert2.pretrain.modeling import BertForMaskedPositionsLM
from finbert2.pretrain.whole_word_masking import (
    JiebaWordSegmenter,
    WholeWordMaskCollator,
)


# --speed_options variants: ours plus these ModelArguments
SPEED_OPTIONS = {
    "ours_attention_dropout_0": {"attention_dropout": 0.0},
    "ours_frozen_embeddings": {"freeze_word_embeddings": True},
    "ours_both": dict(common.SPEED_OPTIONS),
}


class Timer(TrainerCallback):
    """Wall time and non-padding tokens between the end of step ``warmup`` and the end of training."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start = self.tokens_at_start = None
        self.seconds = self.tokens = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.start, self.tokens_at_start = time.perf_counter(), state.num_input_tokens_seen

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start
        self.tokens = state.num_input_tokens_seen - self.tokens_at_start


def run_mlm_default_blocks(documents: list[str], tokenizer, block_size: int):
    """run_mlm.py without --line_by_line: tokenize, concatenate, cut into full blocks (remainder dropped per map batch)."""
    import datasets

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total_length = (len(concatenated[next(iter(examples))]) // block_size) * block_size
        return {k: [t[i: i + block_size] for i in range(0, total_length, block_size)] for k, t in concatenated.items()}

    raw = datasets.Dataset.from_dict({"text": documents})
    tokenized = raw.map(tokenize_function, batched=True, remove_columns=["text"])
    return tokenized.map(group_texts, batched=True)


def train_once(model, dataset, collator, opts, bf16: bool) -> dict:
    timer = Timer(opts.warmup)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, max_steps=opts.warmup + opts.steps, per_device_train_batch_size=opts.batch_size,
            learning_rate=1e-4, logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
            use_cpu=True, bf16=bf16, disable_tqdm=True, seed=0,
            include_num_input_tokens_seen="non_padding", remove_unused_columns=False, dataloader_num_workers=0,
        )
        Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[timer]).train()
    return {"tokens_per_second": timer.tokens / timer.seconds, "seconds": timer.seconds, "tokens": timer.tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser)
    parser.add_argument("--corpus", default=str(common.DEMO_CORPUS))
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--max_length", type=int, default=128, help="block length (both sides)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ablations", action="store_true", help="also ours line by line, ours with full logits")
    parser.add_argument("--speed_options", action="store_true",
                        help="also ours with attention dropout 0, with frozen word embeddings, and with both")
    parser.add_argument("--matmul_n", type=int, default=2048, help="matmul peak: n x n times n x n")
    opts = parser.parse_args()

    info = common.print_header()
    work = common.work_dir("mlmbench_")
    folder = common.model_folder(opts.size, work, "mlm")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    documents = read_corpus(opts.corpus)[:opts.documents]
    precisions = common.precisions(opts.bf16)
    peak = {p: common.matmul_peak(opts.matmul_n, p) for p in precisions}
    print("matmul peak FLOP/s:", {p: f"{v / 1e9:.1f} G" for p, v in peak.items()}, flush=True)

    peer_blocks = run_mlm_default_blocks(documents, tokenizer, opts.max_length)
    peer_collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    segmenter = JiebaWordSegmenter()
    ours_collator = WholeWordMaskCollator(tokenizer)
    packed = EpochMaskedDataset(PretrainDataset(packed_examples(documents, tokenizer, segmenter, opts.max_length)),
                                ours_collator.mask_example, seed=0)
    variants = ["peer", "ours"]
    if opts.ablations:
        lines = EpochMaskedDataset(
            PretrainDataset(line_by_line_examples(documents, tokenizer, segmenter, opts.max_length)),
            ours_collator.mask_example, seed=0)
        variants += ["ours_line_by_line", "ours_full_logits"]
    if opts.speed_options:
        variants += list(SPEED_OPTIONS)
    needed = (opts.warmup + opts.steps) * opts.batch_size
    print(f"peer blocks: {len(peer_blocks)}, our packed blocks: {len(packed)} (a run uses {needed}; "
          "fewer means a second epoch)", flush=True)

    measured = {p: {v: [] for v in variants} for p in precisions}
    flops_per_token = {}
    for round_index in range(opts.rounds):
        for precision in precisions:
            for name in variants:
                set_seed(0)
                if name == "peer":
                    model, dataset, collator = AutoModelForMaskedLM.from_pretrained(folder), peer_blocks, peer_collator
                elif name == "ours":
                    model, dataset, collator = BertForMaskedPositionsLM.from_pretrained(folder), packed, ours_collator
                elif name == "ours_line_by_line":
                    model, dataset, collator = BertForMaskedPositionsLM.from_pretrained(folder), lines, ours_collator
                elif name in SPEED_OPTIONS:
                    model_args = ModelArguments(model_name_or_path=str(folder), **SPEED_OPTIONS[name])
                    model = load_model(BertForMaskedPositionsLM, model_args, tokenizer)
                    dataset, collator = packed, ours_collator
                else:
                    model, dataset, collator = AutoModelForMaskedLM.from_pretrained(folder), packed, ours_collator
                flops_per_token[name] = common.training_flops(model, 1, opts.max_length)
                result = train_once(model, dataset, collator, opts, precision == "bf16")
                measured[precision][name].append(result["tokens_per_second"])
                print(f"round {round_index + 1} {precision} {name:24s} {result['tokens_per_second']:9.1f} tokens/s "
                      f"({result['tokens']} tokens in {result['seconds']:.1f}s)", flush=True)

    rows = []
    for precision in precisions:
        for name in variants:
            tps = statistics.median(measured[precision][name])
            achieved = tps * flops_per_token[name]
            rows.append({"precision": precision, "variant": name, "tokens_per_second": tps,
                         "rounds": measured[precision][name],
                         "ratio_to_peer": tps / statistics.median(measured[precision]["peer"]),
                         "achieved_model_flops_per_second": achieved, "mfu": achieved / peak[precision]})
    record = {"benchmark": "mlm_throughput", "machine": info, "size": opts.size,
              "model": common.size_description(opts.size), "max_length": opts.max_length,
              "batch_size": opts.batch_size, "timed_steps": opts.steps, "warmup_steps": opts.warmup,
              "rounds": opts.rounds, "documents": len(documents), "peer_blocks": len(peer_blocks),
              "our_blocks": len(packed), "matmul_n": opts.matmul_n, "matmul_peak_flops_per_second": peak,
              "nonembedding_parameters": common.nonembedding_parameters(BertForMaskedPositionsLM.from_pretrained(folder)),
              "flops_formula": common.FLOPS_FORMULA, "model_flops_per_token": flops_per_token, "rows": rows}
    common.write_record(opts.output, record)
    print("\n| size | precision | variant | tokens/s (median) | ratio to peer | model TFLOP/s | matmul peak TFLOP/s | MFU |"
          "\n|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {opts.size} | {r['precision']} | {r['variant']} | {r['tokens_per_second']:.1f} | "
              f"**{r['ratio_to_peer']:.2f}x** | {r['achieved_model_flops_per_second'] / 1e12:.3f} | "
              f"{peak[r['precision']] / 1e12:.3f} | {100 * r['mfu']:.1f}% |")


if __name__ == "__main__":
    main()
