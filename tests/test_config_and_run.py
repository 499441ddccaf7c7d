"""The launcher contract: ``<config.yaml> [--key value]`` parsing and the run-folder records."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from finbert2.cli import available_stages, main as cli_main, usage
from finbert2.config import parse_args
from finbert2.errors import ConfigError, OutputDirError
from finbert2.run import RunArguments, prepare_output_dir, read_metrics, write_metrics, write_run_config


@dataclass
class ToyArguments:
    output_dir: str = field(metadata={"help": "where"})
    learning_rate: float = 1e-3
    train_data: list[str] | None = None
    use_bf16: bool = False
    name: str | None = None


def test_yaml_then_flags_override(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("output_dir: out\nlearning_rate: 0.5\ntrain_data: [a.jsonl, b.jsonl]\nuse_bf16: true\n")
    (args,) = parse_args([ToyArguments], [str(config)])
    assert (args.learning_rate, args.train_data, args.use_bf16, args.output_dir) == (0.5, ["a.jsonl", "b.jsonl"], True, "out")
    (args,) = parse_args([ToyArguments], [str(config), "--learning_rate", "2e-5", "--train_data", "c.jsonl",
                                          "--use_bf16", "False", "--output_dir", "elsewhere"])
    assert (args.learning_rate, args.train_data, args.use_bf16, args.output_dir) == (2e-5, ["c.jsonl"], False, "elsewhere")


def test_config_errors_name_the_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("output_dir: out\nlearning_rat: 0.5\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown argument\(s\) learning_rat"):
        parse_args([ToyArguments], [str(config)])
    config.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_args([ToyArguments], [str(config)])
    config.write_text("output_dir: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_args([ToyArguments], [str(config)])
    with pytest.raises(ConfigError, match="no such config file"):
        parse_args([ToyArguments], [str(tmp_path / "missing.yaml")])


def test_training_arguments_parse_from_yaml(tmp_path):
    from transformers import TrainingArguments

    config = tmp_path / "t.yaml"
    config.write_text("output_dir: o\nlearning_rate: 6.0e-4\nwarmup_steps: 1000\nadam_beta2: 0.98\nmax_steps: 5\n")
    training_args, run_args = parse_args([TrainingArguments, RunArguments], [str(config), "--max_steps", "7"])
    assert training_args.learning_rate == 6e-4 and training_args.warmup_steps == 1000
    assert training_args.adam_beta2 == 0.98 and training_args.max_steps == 7
    assert run_args.overwrite_output_dir is False


def test_finished_run_is_not_overwritten(tmp_path):
    out = prepare_output_dir(tmp_path / "run")
    write_run_config(out, ToyArguments(output_dir=str(out)), stage="toy")
    record = json.loads((out / "run_config.json").read_text())
    assert record["arguments"]["learning_rate"] == 1e-3 and record["finbert2_version"] and "git_commit" in record
    write_metrics(out, {"eval_loss": 1.5, "nan": float("nan")})
    assert read_metrics(out) == {"eval_loss": 1.5, "nan": None}
    with pytest.raises(OutputDirError, match="holds a finished run"):
        prepare_output_dir(out)
    (out / "checkpoint-1").mkdir()
    prepare_output_dir(out, overwrite=True)
    assert not (out / "metrics.json").exists()  # the old marker goes before any new work
    assert (out / "checkpoint-1").exists()  # unfinished work kept unless the stage asks to clear
    write_metrics(out, {"x": 1})
    prepare_output_dir(out, overwrite=True, clear=True)
    assert list(out.iterdir()) == []


def test_cli_help_lists_stages(capsys):
    assert cli_main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in available_stages():
        assert name in text
    assert "tokenizer" in available_stages()
    assert cli_main(["no-such-stage"]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert usage().startswith("finbert2")


def _stage_commands():
    """Every stage, and every subcommand its one-line description names ("...: train | mine | ...")."""
    from finbert2.cli import STAGES

    for stage, (_, description) in STAGES.items():
        yield [stage]
        if ": " in description and " | " in description:
            for sub in description.rsplit(": ", 1)[1].split(" | "):
                yield [stage, sub.split()[-1]]


@pytest.mark.parametrize("command", list(_stage_commands()), ids=" ".join)
def test_every_command_prints_its_help(command, capsys):
    """`--help` works for every command (argparse formats each help string with %: a bare "10%" broke it)."""
    try:
        code = cli_main([*command, "--help"])
    except SystemExit as stop:
        code = stop.code
    assert code in (0, None), command
    assert "usage" in capsys.readouterr().out.lower()
