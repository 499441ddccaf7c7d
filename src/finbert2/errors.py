"""Errors the command line reports as one line and a non-zero exit, without a traceback."""

from __future__ import annotations

from pathlib import Path


class FinBERT2Error(Exception):
    """A problem the user can fix (bad input, bad config, occupied output folder)."""


class DataError(FinBERT2Error):
    """Bad input data, reported as ``path:line: reason`` (or ``path: reason`` for whole-file problems)."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


class ConfigError(FinBERT2Error):
    """A bad config file or argument."""


class OutputDirError(FinBERT2Error):
    """The output folder holds a finished run that must not be overwritten silently."""
