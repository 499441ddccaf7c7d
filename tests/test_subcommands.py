"""The shared ``finbert2 <stage> <command>`` dispatch (retrieve, rerank)."""

import pytest

from finbert2.errors import ConfigError


@pytest.mark.parametrize("stage", ["retrieve", "rerank"])
def test_dispatch_usage_help_and_unknown_command(stage, capsys):
    import importlib

    cli = importlib.import_module(f"finbert2.{stage}.cli")
    assert cli.main([]) == 2  # no command: the usage, a failing exit
    assert cli.main(["--help"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"usage: finbert2 {stage} <command>")
    assert all(f"  {name}" in printed for name in cli.COMMANDS)
    with pytest.raises(ConfigError, match=f"unknown {stage} command 'bogus' \\(one of train, "):
        cli.main(["bogus"])
