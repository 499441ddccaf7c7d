"""Argument parsing shared by every stage: ``<config.yaml> [--key value ...]``.

The YAML (or JSON) file holds the arguments; flags after it override single keys. Both are parsed
by one ``HfArgumentParser`` over the stage's dataclasses, so types, defaults, choices and
``__post_init__`` validation are the dataclasses' own, exactly as in the transformers examples.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from finbert2.errors import ConfigError

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML/JSON mapping of argument names to values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of argument names to values, got {type(data).__name__}")
    return data


def config_to_argv(config: dict[str, Any]) -> list[str]:
    """Turn ``{"learning_rate": 5e-5, "train_data": ["a", "b"]}`` into argparse flags."""
    argv: list[str] = []
    for key, value in config.items():
        if value is None:
            continue
        flag = f"--{key}"
        if isinstance(value, bool):
            argv += [flag, str(value)]
        elif isinstance(value, (list, tuple)):
            argv += [flag, *[json.dumps(v) if isinstance(v, dict) else str(v) for v in value]]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return argv


def _field_names(dataclass_types: Sequence[type]) -> set[str]:
    return {f.name for dc in dataclass_types for f in dataclasses.fields(dc) if f.init}


def parse_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None, prog: str | None = None):
    """Parse ``[config.yaml] [--key value ...]`` into instances of ``dataclass_types``.

    Returns the tuple of dataclass instances and the resolved flat dict of the config file (for
    the record). Unknown keys in the file are a ``ConfigError`` naming the file.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(tuple(dataclass_types), prog=prog)
    file_argv: list[str] = []
    if argv and not argv[0].startswith("-") and argv[0].lower().endswith(CONFIG_SUFFIXES):
        config_path = argv.pop(0)
        config = load_config_file(config_path)
        known = _field_names(dataclass_types)
        unknown = sorted(k for k in config if k not in known)
        if unknown:
            raise ConfigError(f"{config_path}: unknown argument(s) {', '.join(unknown)}")
        file_argv = config_to_argv(config)
    # Later occurrences win in argparse, so flags after the file override it.
    return parser.parse_args_into_dataclasses(args=file_argv + argv)
