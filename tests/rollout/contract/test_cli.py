"""The one CLI error convention: one line on stderr, exit 2 for usage/config, 1 for failures."""
from __future__ import annotations

import pytest

from rollout.contract import cli
from rollout.contract.config import ConfigError


def _exit(capsys, fn) -> tuple[int, str]:
    with pytest.raises(SystemExit) as ei:
        fn()
    return ei.value.code, capsys.readouterr().err


def _raise(err):
    def fn():
        with cli.errors("prog", usage=(FileNotFoundError,), failure=(RuntimeError, KeyError)):
            raise err
    return fn


@pytest.mark.parametrize("err,code,line", [
    (ConfigError("config.x: bad\n  value"), 2, "prog: error: config.x: bad value\n"),
    (cli.UsageError("missing command"), 2, "prog: error: missing command\n"),
    (FileNotFoundError("/a: not found"), 2, "prog: error: /a: not found\n"),
    (RuntimeError("the server died"), 1, "prog: error: the server died\n"),
    (KeyError("layers/0"), 1, "prog: error: layers/0\n"),
])
def test_errors_map_exceptions_to_one_line_and_status(capsys, err, code, line):
    assert _exit(capsys, _raise(err)) == (code, line)


def test_unlisted_exceptions_pass_through():
    with pytest.raises(ZeroDivisionError), cli.errors("prog", failure=(RuntimeError,)):
        _ = 1 / 0


def test_flags_parser_makes_parse_errors_usage_errors(capsys):
    def parse(argv):
        if "--bad" in argv:
            raise ValueError("Unknown command line flag 'bad'")
        return argv

    assert cli.flags_parser("prog", parse)(["prog", "x"]) == ["prog", "x"]
    assert _exit(capsys, lambda: cli.flags_parser("prog", parse)(["prog", "--bad"])) == (
        2, "prog: error: Unknown command line flag 'bad'\n")
    explain = cli.flags_parser("prog", parse, lambda argv, e: f"{e}; usage: prog CMD")
    assert _exit(capsys, lambda: explain(["prog", "--bad"]))[1].endswith("; usage: prog CMD\n")
