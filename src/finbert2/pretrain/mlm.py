"""Masked-LM pretraining with Chinese whole-word masking (continued or from scratch).

    sh FinBERT2/pretrain/run_mlm.sh configs/mlm/tiny.yaml --output_dir runs/mlm
    torchrun --nproc_per_node 2 -m finbert2.pretrain.mlm configs/mlm/tiny.yaml --use_cpu True --output_dir runs/mlm
    finbert2 mlm configs/mlm/base.yaml --train_data corpus.jsonl --output_dir runs/mlm

The output folder is a plain ``BertForMaskedLM`` (safetensors) with its tokenizer, plus
``checkpoint-*`` folders (an interrupted run resumes from the last), ``loss_log.csv``/``loss.png``,
``run_config.json``, ``run.log`` and, last, ``metrics.json``.
"""

from __future__ import annotations

import math
import sys

from transformers import TrainingArguments

from finbert2.precision import PrecisionTrainingArguments

from finbert2.config import parse_args
from finbert2.errors import ConfigError
from finbert2.modeling import ModelArguments
from finbert2.pretrain.args import PretrainDataArguments
from finbert2.pretrain.data import PretrainDataset
from finbert2.pretrain.headless import HeadlessStartArguments
from finbert2.pretrain.modeling import BertForMaskedPositionsLM
from finbert2.pretrain.runner import finish, run_pretraining
from finbert2.pretrain.whole_word_masking import WholeWordMaskCollator, premask
from finbert2.run import RunArguments, setup_logging


def mlm_collators(data_args: PretrainDataArguments):
    def make(tokenizer, eval_dataset: PretrainDataset, seed: int):
        collator = WholeWordMaskCollator(
            tokenizer, mlm_probability=data_args.mlm_probability, mask_replace_prob=data_args.mask_replace_prob,
            random_replace_prob=data_args.random_replace_prob, pad_to_multiple_of=data_args.pad_to_multiple_of,
        )
        return collator, PretrainDataset(premask(eval_dataset.examples, collator, seed))

    return make


def run(model_args: ModelArguments, data_args: PretrainDataArguments, training_args: TrainingArguments,
        run_args: RunArguments, callbacks=(), headless_args: HeadlessStartArguments | None = None) -> dict:
    metrics = run_pretraining(
        "mlm", model_args, data_args, training_args, run_args,
        model_class=BertForMaskedPositionsLM, make_collators=mlm_collators(data_args), callbacks=callbacks,
        headless_args=headless_args,
    )
    if metrics.get("eval_loss") is not None:
        metrics["perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    return finish(training_args.output_dir, metrics, training_args.process_index == 0)


def main(argv: list[str] | None = None) -> int:
    try:
        model_args, data_args, headless_args, training_args, run_args = parse_args(
            (ModelArguments, PretrainDataArguments, HeadlessStartArguments, PrecisionTrainingArguments, RunArguments),
            argv, prog="finbert2 mlm")
    except ValueError as err:  # TrainingArguments' own validation (e.g. bf16 without hardware support)
        raise ConfigError(f"mlm: {str(err).splitlines()[0]}") from None
    setup_logging()
    run(model_args, data_args, training_args, run_args, headless_args=headless_args)
    return 0


if __name__ == "__main__":
    from finbert2.cli import run_main

    sys.exit(run_main(main))
