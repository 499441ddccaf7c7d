"""RetroMAE training steps/s against MLM steps/s on the same encoder and batch, with a profile of a step.

    python benchmarks/retromae_vs_mlm/bench.py --size e5-small  --steps 20 --profile_out benchmarks/retromae_vs_mlm/profile-e5-small.txt
    python benchmarks/retromae_vs_mlm/bench.py --size bert-base --steps 10 --profile_out benchmarks/retromae_vs_mlm/profile-bert-base.txt

Both stages' own models and collators from ``finbert2.pretrain``, from the same weights (``--size``,
see ``common.SIZE_HELP``; RetroMAE's one-layer enhanced decoder is new, seeded) and the same batches of
the same examples (the demo corpus, jieba word boundaries, ``--layout line_by_line`` as
``configs/retromae/*.yaml`` run it, or ``packed`` as ``configs/mlm/*.yaml``):

- MLM: ``BertForMaskedPositionsLM`` + ``WholeWordMaskCollator`` (15% whole-word masking, the MLM configs');
- RetroMAE: ``RetroMAEForPretraining`` + ``RetroMAECollator`` (30% encoder masking, decoder mask
  ratio 0.5, the RetroMAE configs'), the decoder's per-row visibility masks included.

Masks are drawn per fetch (``EpochMaskedDataset``, as the stage runner does). A step is: collate the
batch, forward, backward, AdamW step, zero grads, in a plain loop (no Trainer, so only the model and
collator differ). Steps/s over ``--steps`` after ``--warmup``, the two interleaved over ``--rounds``
(median). Then ``--profile_steps`` steps of each under ``torch.profiler``: the top ops by self CPU time
(with ``collate``/``forward``/``backward``/``optimizer`` ranges) are written to ``--profile_out``.
Precisions: fp32, and bf16 autocast where the CPU has native bf16.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common

from finbert2.data import read_corpus
from finbert2.pretrain.data import (
    EpochMaskedDataset,
    PretrainDataset,
    line_by_line_examples,
    packed_examples,
)
from finbert2.pretrain.modeling import BertForMaskedPositionsLM, RetroMAEForPretraining
from finbert2.pretrain.retromae import RetroMAECollator
from finbert2.pretrain.whole_word_masking import (
    JiebaWordSegmenter,
    WholeWordMaskCollator,
)

VARIANTS = ("mlm", "retromae")
PHASES = ("collate", "forward", "backward", "optimizer")


def build(name: str, folder: Path, examples: list[dict], tokenizer, pooling: str):
    torch.manual_seed(0)
    if name == "mlm":
        model = BertForMaskedPositionsLM.from_pretrained(folder)
        collator = WholeWordMaskCollator(tokenizer, mlm_probability=0.15)
        mask = collator.mask_example
    else:
        model = RetroMAEForPretraining.from_pretrained(folder)
        model.sentence_pooling = pooling
        collator = RetroMAECollator(WholeWordMaskCollator(tokenizer, mlm_probability=0.3), decoder_mask_ratio=0.5)
        mask = collator.mask_example
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    return model, EpochMaskedDataset(PretrainDataset(examples), mask, seed=0), collator, optimizer


def step(model, dataset, collator, optimizer, indices: list[int], precision: str) -> None:
    with record_function("collate"):
        batch = collator([dataset[i] for i in indices])
    with record_function("forward"), common.autocast(precision):
        loss = model(**batch).loss
    with record_function("backward"):
        loss.backward()
    with record_function("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def batches(n_examples: int, batch_size: int, count: int, offset: int = 0):
    for k in range(count):
        start = ((offset + k) * batch_size) % max(1, n_examples - batch_size + 1)
        yield list(range(start, start + batch_size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser)
    parser.add_argument("--corpus", default=str(common.DEMO_CORPUS))
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--layout", choices=("line_by_line", "packed"), default="line_by_line")
    parser.add_argument("--max_length", type=int, default=256, help="the RetroMAE/MLM e5-small configs' 256")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile_steps", type=int, default=3)
    parser.add_argument("--profile_rows", type=int, default=30)
    parser.add_argument("--profile_out", type=Path, default=None,
                        help="profiler tables (default: <output>.profile.md beside --output, else profile-<size>.md here)")
    opts = parser.parse_args()

    info = common.print_header()
    from transformers import AutoTokenizer

    from finbert2.retrieve.encoder import saved_sentence_settings

    work = common.work_dir("retromae_bench_")
    folder = common.model_folder(opts.size, work, "mlm")
    pooling = saved_sentence_settings(str(common.model_folder(opts.size, work, "encoder"))).get("pooling", "cls")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    documents = read_corpus(opts.corpus)[:opts.documents]
    make = line_by_line_examples if opts.layout == "line_by_line" else packed_examples
    examples = make(documents, tokenizer, JiebaWordSegmenter(), opts.max_length)
    tokens_per_example = sum(len(e["input_ids"]) for e in examples) / len(examples)
    print(f"{len(examples)} examples, {tokens_per_example:.1f} tokens each on average", flush=True)

    precisions = common.precisions(opts.bf16)
    measured = {p: {v: [] for v in VARIANTS} for p in precisions}
    for round_index in range(opts.rounds):
        for precision in precisions:
            for name in VARIANTS:
                model, dataset, collator, optimizer = build(name, folder, examples, tokenizer, pooling)
                plan = list(batches(len(examples), opts.batch_size, opts.warmup + opts.steps))
                for indices in plan[:opts.warmup]:
                    step(model, dataset, collator, optimizer, indices, precision)
                start = time.perf_counter()
                for indices in plan[opts.warmup:]:
                    step(model, dataset, collator, optimizer, indices, precision)
                rate = opts.steps / (time.perf_counter() - start)
                measured[precision][name].append(rate)
                print(f"round {round_index + 1} {precision} {name:8s} {rate:.3f} steps/s", flush=True)

    tables, profiles = [], {}
    for precision in precisions:
        for name in VARIANTS:
            model, dataset, collator, optimizer = build(name, folder, examples, tokenizer, pooling)
            plan = list(batches(len(examples), opts.batch_size, 1 + opts.profile_steps))
            step(model, dataset, collator, optimizer, plan[0], precision)  # warm-up, not profiled
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for indices in plan[1:]:
                    step(model, dataset, collator, optimizer, indices, precision)
            averages = prof.key_averages()
            table = averages.table(sort_by="self_cpu_time_total", row_limit=opts.profile_rows)
            phases = {e.key: e.cpu_time_total / 1000 / opts.profile_steps for e in averages if e.key in PHASES}
            phase_line = ", ".join(f"{k} {phases.get(k, float('nan')):.1f} ms" for k in PHASES)
            profiles.setdefault(precision, {})[name] = phases
            tables.append(f"## {name}, {precision}: {opts.profile_steps} steps, batch {opts.batch_size}\n\n"
                          f"Per step (CPU total of each range): {phase_line}.\n\n"
                          f"Top {opts.profile_rows} ops by self CPU time:\n\n```\n{table}\n```\n")

    rows = []
    for precision in precisions:
        mlm = statistics.median(measured[precision]["mlm"])
        retromae = statistics.median(measured[precision]["retromae"])
        rows.append({"precision": precision, "mlm_steps_per_second": mlm, "retromae_steps_per_second": retromae,
                     "retromae_over_mlm": retromae / mlm, "rounds": measured[precision],
                     "profiled_ms_per_step": profiles.get(precision, {})})
    record = {"benchmark": "retromae_vs_mlm", "machine": info, "size": opts.size,
              "model": common.size_description(opts.size), "layout": opts.layout, "max_length": opts.max_length,
              "batch_size": opts.batch_size, "examples": len(examples), "mean_tokens_per_example": tokens_per_example,
              "timed_steps": opts.steps, "rounds": opts.rounds, "retromae_sentence_pooling": pooling, "rows": rows}
    profile_out = opts.profile_out or (opts.output.with_suffix(".profile.md") if opts.output
                                       else Path(__file__).resolve().parent / f"profile-{opts.size}.md")
    profile_out.parent.mkdir(parents=True, exist_ok=True)
    profile_out.write_text("\n".join([f"# Where a training step's time goes: RetroMAE vs MLM ({opts.size})", "",
                                      *common.header_lines(info), "", *tables]), encoding="utf-8")
    record["profile"] = str(profile_out)
    common.write_record(opts.output, record)
    print("\n| size | precision | MLM steps/s | RetroMAE steps/s | RetroMAE / MLM |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {opts.size} | {r['precision']} | {r['mlm_steps_per_second']:.3f} | "
              f"{r['retromae_steps_per_second']:.3f} | **{r['retromae_over_mlm']:.2f}x** |")
    print(f"profile tables: {profile_out}")


if __name__ == "__main__":
    main()
