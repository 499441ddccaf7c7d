"""``finbert2 rerank <train|evaluate|predict> [config.yaml] [--key value ...]``.

    finbert2 rerank train configs/reranker/tiny.yaml --output_dir runs/reranker
    finbert2 rerank evaluate --eval_data data/demo/retrieval/eval --models bm25 --rerank runs/reranker \\
        --rerank_top_k 20 --output_dir runs/rerank_eval
    finbert2 rerank predict --model_name_or_path runs/reranker --input_file pairs.jsonl --output_file ranked.jsonl

``rerank evaluate`` is ``retrieve evaluate`` (same arguments) with at least one ``--rerank`` model.
"""

from __future__ import annotations

from finbert2.config import parse_args
from finbert2.errors import ConfigError
from finbert2.subcommands import run_subcommand, subcommand_usage

COMMANDS = {
    "train": "cross-encoder fine-tuning (listwise loss over 1 positive + mined hard negatives)",
    "evaluate": "two-stage retrieval table: each first stage alone and reranked (retrieve evaluate --rerank)",
    "predict": "order passages for queries (JSONL {query, texts})",
}


def usage() -> str:
    return subcommand_usage('rerank', COMMANDS)


def train(argv: list[str]) -> int:
    from finbert2.modeling import ModelArguments
    from finbert2.rerank.args import RerankerDataArguments, RerankerTrainingArguments
    from finbert2.rerank.trainer import run_training
    from finbert2.run import RunArguments

    model_args, data_args, training_args, run_args = parse_args(
        (ModelArguments, RerankerDataArguments, RerankerTrainingArguments, RunArguments), argv,
        prog="finbert2 rerank train")
    run_training(model_args, data_args, training_args, run_args)
    return 0


def evaluate(argv: list[str]) -> int:
    from finbert2.retrieve.args import EvaluateArguments
    from finbert2.retrieve.evaluate import run_evaluation
    from finbert2.run import RunArguments, setup_logging

    args, run_args = parse_args((EvaluateArguments, RunArguments), argv, prog="finbert2 rerank evaluate")
    if not args.rerank:
        raise ConfigError("rerank evaluate: give --rerank MODEL (a reranker folder; several for several rows)")
    setup_logging()
    run_evaluation(args, run_args)
    return 0


def predict(argv: list[str]) -> int:
    from finbert2.rerank.args import PredictArguments
    from finbert2.rerank.predict import run_predict
    from finbert2.run import setup_logging

    (args,) = parse_args((PredictArguments,), argv, prog="finbert2 rerank predict")
    setup_logging()
    run_predict(args)
    return 0


HANDLERS = {"train": train, "evaluate": evaluate, "predict": predict}


def main(argv: list[str] | None = None) -> int:
    return run_subcommand('rerank', COMMANDS, HANDLERS, argv)
