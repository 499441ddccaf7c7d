"""Fin-TopicModel: BERTopic over financial titles, with Chinese topic words, metrics and pictures.

    sh Fin-Topicmodel/run_topicmodel.sh configs/topics/tiny.yaml --output_dir runs/topics
    finbert2 topics configs/topics/base.yaml --train_data titles.jsonl --output_dir runs/topics
    finbert2 topics transform --model_dir runs/topics/model --input_data new.jsonl --output_file new_topics.csv

A fit writes topics.csv, doc_topics.csv, topics_barchart.png, documents_map.png, topics.html,
topics_over_time.csv (dated titles), embeddings.npy, model/ (BERTopic safetensors + our word lists
and encoder record), run_config.json, run.log and, last, metrics.json.
"""

from __future__ import annotations

from finbert2.config import parse_args
from finbert2.run import RunArguments, setup_logging
from finbert2.topics.args import TopicArguments, TransformArguments

SUBCOMMANDS = ("fit", "transform")


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    command = "fit"
    if argv and argv[0] in SUBCOMMANDS:
        command, argv = argv[0], argv[1:]
    if command == "transform":
        (args,) = parse_args((TransformArguments,), argv, prog="finbert2 topics transform")
        setup_logging()
        from finbert2.topics.pipeline import transform  # BERTopic/numba load only when needed

        table = transform(args)
        print(f"{len(table)} titles -> {args.output_file}")
        return 0
    args, run_args = parse_args((TopicArguments, RunArguments), argv, prog="finbert2 topics [fit]")
    setup_logging()
    from finbert2.topics.inputs import prepare_inputs

    inputs = prepare_inputs(args)  # bad input stops here, before BERTopic/numba load (tens of seconds)
    from finbert2.topics.pipeline import run

    run(args, run_args, inputs)
    return 0
