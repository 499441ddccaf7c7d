"""The ``finbert2 <stage> <command>`` dispatch that stage CLIs with several commands share."""

from __future__ import annotations

import sys
from typing import Callable

from finbert2.errors import ConfigError


def subcommand_usage(stage: str, commands: dict[str, str]) -> str:
    """``usage: finbert2 STAGE <command> ...`` and one line per command."""
    width = max(map(len, commands))
    return "\n".join([f"usage: finbert2 {stage} <command> [config.yaml] [--key value ...]",
                      f"       finbert2 {stage} <command> --help", "", "commands:"]
                     + [f"  {name.ljust(width)}  {text}" for name, text in commands.items()])


def run_subcommand(stage: str, commands: dict[str, str], handlers: dict[str, Callable[[list[str]], int]],
                   argv: list[str] | None = None) -> int:
    """Run ``handlers[argv[0]](argv[1:])``; no command prints the usage (exit 2), ``--help`` prints it (exit 0)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(subcommand_usage(stage, commands))
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in handlers:
        raise ConfigError(f"unknown {stage} command '{command}' (one of {', '.join(handlers)})")
    return handlers[command](rest)
