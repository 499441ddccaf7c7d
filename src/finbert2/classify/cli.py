"""``finbert2 classify {train,baseline,predict} [config.yaml] [--key value ...]``: the Fin-Labeler stage.

    sh Fin-labeler/runclassify.sh configs/classify/tiny.yaml --output_dir runs/classify
    finbert2 classify baseline configs/classify/tiny.yaml --output_dir runs/classify_baseline
    python Fin-labeler/sequence_inference.py --model_name_or_path runs/classify \
        --input_file data/demo/sentiment/test.jsonl --output_file runs/predictions.jsonl

``train`` and ``baseline`` read the same config, so both see identical splits.
"""

from __future__ import annotations

import sys

from finbert2.errors import ConfigError

USAGE = """usage: finbert2 classify <command> [config.yaml] [--key value ...]

commands:
  train     fine-tune an encoder (binary, multi-class, multi-label); honest validation-only model selection
  baseline  TF-IDF (jieba words + character n-grams) + logistic regression on the same splits
  predict   label a JSONL/CSV file with a fine-tuned classifier (probabilities, optional [CLS] vectors)

`finbert2 classify <command> --help` lists every argument with its default."""


def _training_dataclasses():

    from finbert2.classify.args import DataArguments
    from finbert2.modeling import ModelArguments
    from finbert2.run import RunArguments

    from finbert2.precision import PrecisionTrainingArguments

    return ModelArguments, DataArguments, PrecisionTrainingArguments, RunArguments


def train_main(argv: list[str]) -> int:
    from finbert2.classify.train import run_train
    from finbert2.config import parse_args
    from finbert2.run import setup_logging

    model_args, data_args, training_args, run_args = parse_args(
        _training_dataclasses(), argv, prog="finbert2 classify train")
    setup_logging()
    run_train(model_args, data_args, training_args, run_args)
    return 0


def baseline_main(argv: list[str]) -> int:
    from finbert2.classify.args import BaselineArguments
    from finbert2.classify.baseline import run_baseline
    from finbert2.config import parse_args
    from finbert2.modeling import ModelArguments
    from finbert2.run import setup_logging

    class UnusedModelArguments(ModelArguments):
        """Accepted so train and baseline share one config; the baseline needs no model."""

        def __post_init__(self):
            pass

    _, data_args, training_args, run_args = _training_dataclasses()
    _, data_args, training_args, run_args, baseline_args = parse_args(
        (UnusedModelArguments, data_args, training_args, run_args, BaselineArguments), argv,
        prog="finbert2 classify baseline")
    setup_logging()
    run_baseline(data_args, baseline_args, run_args, training_args.output_dir, training_args.seed)
    return 0


def predict_main(argv: list[str]) -> int:
    from finbert2.classify.args import PredictArguments
    from finbert2.classify.predict import run_predict
    from finbert2.config import parse_args
    from finbert2.run import setup_logging

    (args,) = parse_args((PredictArguments,), argv, prog="finbert2 classify predict")
    setup_logging()
    run_predict(args)
    return 0


COMMANDS = {"train": train_main, "baseline": baseline_main, "predict": predict_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise ConfigError(f"classify: unknown command '{command}' (have: {', '.join(COMMANDS)})")
    return COMMANDS[command](rest)
