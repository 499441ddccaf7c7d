"""``finbert2 numllm {train,build-numeric,merge,evaluate} [config.yaml] [--key value ...]``: the NumLLM stage.

    finbert2 convert gemma-3-270m runs/gemma-3-270m
    finbert2 numllm build-numeric --input_data corpus.jsonl --heldout_percentage 10 --output_dir runs/numllm/items
    sh Fin-numllm/run_domain_lora.sh configs/numllm/gemma-270m.yaml --output_dir runs/numllm/domain
    sh Fin-numllm/run_numeric_lora.sh configs/numllm/gemma-270m.yaml --output_dir runs/numllm/numeric
    sh Fin-numllm/merge.sh configs/numllm/gemma-270m.yaml --output_dir runs/numllm/merged
    sh Fin-numllm/evaluate.sh configs/numllm/gemma-270m.yaml --output_dir runs/numllm/eval

One config serves every command: shared keys at the top, one section per command (``domain``,
``numeric``, ``build_numeric``, ``merge``, ``evaluate``; ``train`` reads the section its ``--task``
names); ``--key value`` flags override both.
"""

from __future__ import annotations

import itertools
import sys

from finbert2.errors import ConfigError

USAGE = """usage: finbert2 numllm <command> [config.yaml] [--key value ...]

commands:
  train          one LoRA module on a causal LM: task domain ({text} corpus) or numeric ({prompt, answer} items)
  build-numeric  NumCT-style multiple-choice items (options differ in a numeric variable) from financial text
  merge          adapters -> peft add_weighted_adapter (svd | linear | cat | ties) -> merge_and_unload -> plain folder
  evaluate       multiple-choice accuracy by log-likelihood (numeric vs non-numeric), held-out perplexity

`finbert2 numllm <command> --help` lists every argument with its default."""


SECTIONS = ("domain", "numeric", "build_numeric", "merge", "evaluate")


def _all_config_keys() -> set[str]:
    import dataclasses

    from finbert2.numllm import args
    from finbert2.precision import PrecisionTrainingArguments as TrainingArguments
    from finbert2.run import RunArguments

    types = (args.CausalLMArguments, args.LoraArguments, args.NumLLMDataArguments, args.BuildNumericArguments,
             args.MergeArguments, args.EvaluateArguments, TrainingArguments, RunArguments)
    return {f.name for dc in types for f in dataclasses.fields(dc) if f.init}


def _command_argv(dataclass_types, argv: list[str], section: str) -> list[str]:
    """``argv`` with the shared config file reduced to what one command reads.

    A numllm config holds shared top-level keys (the base model, LoRA settings, ...) and one
    section per command (``domain:``, ``numeric:``, ``build_numeric:``, ``merge:``, ``evaluate:``)
    whose keys override the shared ones for that command; each command keeps the keys it knows.
    A key no command knows is an error (a typo, not another command's setting).
    """
    import dataclasses

    from finbert2.config import CONFIG_SUFFIXES, config_to_argv, load_config_file

    if not argv or argv[0].startswith("-") or not argv[0].lower().endswith(CONFIG_SUFFIXES):
        return argv
    config = load_config_file(argv[0])
    sections = {name: config.pop(name) for name in SECTIONS if name in config}
    all_keys = _all_config_keys()
    for name, keys in [("", config), *sections.items()]:
        if not isinstance(keys, dict):
            raise ConfigError(f"{argv[0]}: section '{name}' must be a mapping of argument names to values")
        unknown = sorted(set(keys) - all_keys)
        if unknown:
            raise ConfigError(f"{argv[0]}: unknown argument(s) {', '.join(unknown)}"
                              + (f" in section '{name}'" if name else ""))
    known = {f.name for dc in dataclass_types for f in dataclasses.fields(dc) if f.init}
    merged = {**config, **sections.get(section, {})}
    return config_to_argv({k: v for k, v in merged.items() if k in known}) + argv[1:]


def _parse(dataclass_types, argv: list[str], command: str, section: str):
    from finbert2.config import parse_args

    try:
        return parse_args(dataclass_types, _command_argv(dataclass_types, argv, section),
                          prog=f"finbert2 numllm {command}")
    except ValueError as err:  # TrainingArguments' own validation
        raise ConfigError(f"numllm {command}: {str(err).splitlines()[0]}") from None


def _task_in(argv: list[str]) -> str:
    """The ``--task`` a train command line names (it picks the config section), default domain."""
    for flag, value in itertools.pairwise(argv):
        if flag == "--task":
            return value
    return "domain"


def train_main(argv: list[str]) -> int:
    from finbert2.numllm.args import CausalLMArguments, LoraArguments, NumLLMDataArguments
    from finbert2.numllm.train import run_train
    from finbert2.precision import PrecisionTrainingArguments
    from finbert2.run import RunArguments, setup_logging

    model_args, lora_args, data_args, training_args, run_args = _parse(
        (CausalLMArguments, LoraArguments, NumLLMDataArguments, PrecisionTrainingArguments, RunArguments), argv, "train",
        _task_in(argv))
    setup_logging()
    run_train(model_args, lora_args, data_args, training_args, run_args)
    return 0


def build_numeric_main(argv: list[str]) -> int:
    from finbert2.numllm.args import BuildNumericArguments
    from finbert2.numllm.numeric_items import run_build_numeric
    from finbert2.run import setup_logging

    (args,) = _parse((BuildNumericArguments,), argv, "build-numeric", "build_numeric")
    setup_logging()
    run_build_numeric(args)
    return 0


def merge_main(argv: list[str]) -> int:
    from finbert2.numllm.args import CausalLMArguments, MergeArguments
    from finbert2.numllm.merge import run_merge
    from finbert2.run import setup_logging

    model_args, args = _parse((CausalLMArguments, MergeArguments), argv, "merge", "merge")
    setup_logging()
    run_merge(model_args, args)
    return 0


def evaluate_main(argv: list[str]) -> int:
    from finbert2.numllm.args import CausalLMArguments, EvaluateArguments
    from finbert2.numllm.evaluate import run_evaluate
    from finbert2.run import setup_logging

    model_args, args = _parse((CausalLMArguments, EvaluateArguments), argv, "evaluate", "evaluate")
    setup_logging()
    run_evaluate(model_args, args)
    return 0


COMMANDS = {"train": train_main, "build-numeric": build_numeric_main, "merge": merge_main, "evaluate": evaluate_main}


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise ConfigError(f"numllm: unknown command '{command}' (have: {', '.join(COMMANDS)})")
    return COMMANDS[command](rest)


def main(argv: list[str] | None = None) -> int:
    from finbert2.cli import run_main

    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
