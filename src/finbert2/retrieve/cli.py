"""``finbert2 retrieve <train|mine|evaluate|index|search> [config.yaml] [--key value ...]``.

    finbert2 retrieve train configs/retriever/tiny.yaml --output_dir runs/retriever
    finbert2 retrieve mine --model_name_or_path runs/retriever --input_file queries.jsonl --output_file mined.jsonl
    finbert2 retrieve evaluate --eval_data data/demo/retrieval/eval --models bm25 runs/retriever --output_dir runs/eval
    finbert2 retrieve index --model_name_or_path runs/retriever --corpus docs.jsonl --output_dir runs/index
    finbert2 retrieve search --index_dir runs/index --query 美联储加息对科技股的影响
    finbert2 retrieve index --model_name_or_path runs/retriever --corpus docs.jsonl --index runs/index.db
    finbert2 retrieve search --index runs/index.db --query 美联储加息对科技股的影响 --mode hybrid
    finbert2 retrieve import --from_folder runs/index --index runs/index.db   (= retrieve index --from_folder ...)
"""

from __future__ import annotations

from finbert2.config import parse_args
from finbert2.subcommands import run_subcommand, subcommand_usage

COMMANDS = {
    "train": "contrastive fine-tuning (InfoNCE over hard + in-batch negatives)",
    "mine": "hard-negative mining with faiss",
    "evaluate": "ndcg/mrr/recall/map of dense models and BM25 on a corpus/queries/qrels folder",
    "index": "build a faiss index folder (--output_dir) or a Milvus index (--index FILE.db or http(s)://host:port)",
    "search": "top-k documents for queries from an index folder or a Milvus index",
    "import": "copy an index folder into a Milvus index (also: retrieve index --from_folder OLD --index URI)",
}


def usage() -> str:
    return subcommand_usage('retrieve', COMMANDS)


def train(argv: list[str]) -> int:
    from finbert2.modeling import ModelArguments
    from finbert2.retrieve.args import RetrieverDataArguments, RetrieverTrainingArguments
    from finbert2.run import RunArguments
    from finbert2.retrieve.trainer import run_training

    model_args, data_args, training_args, run_args = parse_args(
        (ModelArguments, RetrieverDataArguments, RetrieverTrainingArguments, RunArguments), argv,
        prog="finbert2 retrieve train")
    run_training(model_args, data_args, training_args, run_args)
    return 0


def mine(argv: list[str]) -> int:
    from finbert2.retrieve.args import MineArguments
    from finbert2.retrieve.mine import run_mining
    from finbert2.run import setup_logging

    (args,) = parse_args((MineArguments,), argv, prog="finbert2 retrieve mine")
    setup_logging()
    run_mining(args)
    return 0


def evaluate(argv: list[str]) -> int:
    from finbert2.retrieve.args import EvaluateArguments
    from finbert2.retrieve.evaluate import run_evaluation
    from finbert2.run import RunArguments, setup_logging

    args, run_args = parse_args((EvaluateArguments, RunArguments), argv, prog="finbert2 retrieve evaluate")
    setup_logging()
    run_evaluation(args, run_args)
    return 0


def index(argv: list[str]) -> int:
    from finbert2.retrieve.args import IndexArguments
    from finbert2.retrieve.index import run_index
    from finbert2.run import RunArguments, setup_logging

    if any(arg == "--from_folder" or arg.startswith("--from_folder=") for arg in argv):
        return import_folder(argv, prog="finbert2 retrieve index --from_folder")  # the spelling of import
    args, run_args = parse_args((IndexArguments, RunArguments), argv, prog="finbert2 retrieve index")
    setup_logging()
    metrics = run_index(args, run_args)
    if args.index is not None:
        print(f"indexed {metrics['documents']} documents ({metrics['windows']} windows) into {args.index}")
    return 0


def search(argv: list[str]) -> int:
    from finbert2.retrieve.args import SearchArguments
    from finbert2.retrieve.index import run_search

    (args,) = parse_args((SearchArguments,), argv, prog="finbert2 retrieve search")
    run_search(args)
    return 0


def import_folder(argv: list[str], prog: str = "finbert2 retrieve import") -> int:
    from finbert2.serve.milvus_store import ImportArguments, run_import

    (args,) = parse_args((ImportArguments,), argv, prog=prog)
    documents, windows = run_import(args)
    print(f"imported {documents} documents ({windows} windows) into {args.index}")
    return 0


HANDLERS = {"train": train, "mine": mine, "evaluate": evaluate, "index": index, "search": search,
            "import": import_folder}


def main(argv: list[str] | None = None) -> int:
    return run_subcommand('retrieve', COMMANDS, HANDLERS, argv)
