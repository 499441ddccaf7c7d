"""``finbert2 merge MODEL_A MODEL_B OUTPUT_DIR --alpha A|auto``: weight-space interpolation of two checkpoints.

    finbert2 merge runs/mlm runs/e5-small runs/mlm-merged --alpha 0.7
    finbert2 merge runs/mlm runs/e5-small runs/mlm-merged --alpha auto \\
        --eval_retrieval_data data/fin-eva/eval --eval_split validation \\
        [--eval_classification_data val.jsonl [--eval_classification_train train.jsonl]]

``alpha * A + (1 - alpha) * B`` tensor by tensor (LM-Cocktail, WiSE-FT): 1 gives A, 0 gives B.
``auto`` scores 0.0, 0.1, ..., 1.0 on the validation data and keeps the best (``finbert2.merge.select``).
The three positionals may also be given as ``--model_a``, ``--model_b``, ``--output_dir`` (or in a YAML file).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from finbert2.errors import ConfigError

POSITIONALS = ("model_a", "model_b", "output_dir")


@dataclass
class MergeArguments:
    model_a: str | None = field(default=None, metadata={"help": "Model A (the adapted one), weight alpha: folder or hub id."})
    model_b: str | None = field(default=None, metadata={"help": "Model B (the start), weight 1 - alpha: folder or hub id."})
    output_dir: str | None = field(default=None, metadata={"help": "New folder for the merged model."})
    alpha: str | None = field(default=None, metadata={"help": "Weight of model A in [0, 1] (1: A, 0: B), or auto: "
                                                      "the best on the validation data."})
    eval_retrieval_data: str | None = field(
        default=None, metadata={"help": "auto: a retrieval folder (corpus.jsonl, <split>_queries.jsonl, "
                                "<split>_qrels.jsonl) scored by nDCG@10."})
    eval_split: str = field(default="test", metadata={"help": "Query/qrels file prefix in eval_retrieval_data."})
    eval_classification_data: str | None = field(
        default=None, metadata={"help": "auto: {text, label} rows for a linear probe on frozen, standardized vectors "
                                "(macro-F1); the score is then the mean of nDCG@10 and the probe's F1."})
    eval_classification_train: str | None = field(
        default=None, metadata={"help": "auto: {text, label} rows the probe is fitted on, scored on "
                                "eval_classification_data (without it, 5-fold cross-validation on that file)."})
    alpha_grid: list[float] | None = field(
        default=None, metadata={"help": "auto: the alphas scored (default 0.0 0.1 ... 1.0; 0 and 1 always added)."})
    max_length: int = field(default=512, metadata={"help": "auto: longest text in tokens when encoding."})
    batch_size: int = field(default=32, metadata={"help": "auto: texts per forward pass when encoding."})

    def __post_init__(self):
        from finbert2.merge.runner import AUTO, parse_alpha

        missing = [name for name in POSITIONALS if not getattr(self, name)]
        if missing:
            raise ConfigError(f"merge: give {', '.join(missing)} (finbert2 merge MODEL_A MODEL_B OUTPUT_DIR --alpha A)")
        if parse_alpha(self.alpha) is None:
            raise ConfigError("merge: give --alpha, a number in [0, 1] or auto")
        if parse_alpha(self.alpha) == AUTO and not self.eval_retrieval_data:
            raise ConfigError("merge: --alpha auto needs --eval_retrieval_data (a corpus/queries/qrels folder)")
        if self.eval_classification_train and not self.eval_classification_data:
            raise ConfigError("merge: --eval_classification_train needs --eval_classification_data (the rows it is "
                              "scored on)")


def positionals_to_flags(argv: list[str]) -> list[str]:
    """``A B OUT --alpha x`` -> ``--model_a A --model_b B --output_dir OUT --alpha x`` (after a config file, if first)."""
    from finbert2.config import CONFIG_SUFFIXES

    head = [argv.pop(0)] if argv and not argv[0].startswith("-") and argv[0].lower().endswith(CONFIG_SUFFIXES) else []
    flags: list[str] = []
    for name in POSITIONALS:
        if not argv or argv[0].startswith("-"):
            break
        flags += [f"--{name}", argv.pop(0)]
    return head + flags + argv


def main(argv: list[str] | None = None) -> int:
    from finbert2.config import parse_args
    from finbert2.merge.runner import Evaluation, merge_checkpoints
    from finbert2.run import RunArguments, setup_logging, write_run_config

    argv = positionals_to_flags(list(sys.argv[1:] if argv is None else argv))
    args, run_args = parse_args((MergeArguments, RunArguments), argv, prog="finbert2 merge")
    setup_logging()

    def record(folder):
        setup_logging(folder)
        write_run_config(folder, args, run_args, stage="merge")

    evaluation = Evaluation(retrieval_data=args.eval_retrieval_data, retrieval_split=args.eval_split,
                            classification_data=args.eval_classification_data,
                            classification_train=args.eval_classification_train, alphas=args.alpha_grid,
                            max_length=args.max_length, batch_size=args.batch_size)
    merge_checkpoints(args.model_a, args.model_b, args.output_dir, args.alpha, evaluation,
                      overwrite=run_args.overwrite_output_dir, on_start=record)
    return 0
