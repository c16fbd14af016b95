"""One error convention for the command-line tools (cure-train, cure-eval, cure-convert,
cure-data).

An error is one line on stderr, ``<prog>: error: <message>``, never a traceback, and the exit
status says what to do about it:

* 2 (:data:`EXIT_USAGE`): the command line or the config is wrong (unknown flag or field, bad
  value, missing input); fix the command and run it again.
* 1 (:data:`EXIT_FAILURE`): the work itself failed (a dead server, a failed download, a
  damaged checkpoint, a model that does not load or verify).

:func:`errors` maps exception types to the two; :func:`flags_parser` wraps a flag parser so a
bad flag is a usage error. Standard library only.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from rollout.contract.config import ConfigError

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "UsageError", "errors", "exit_error", "flags_parser",
           "one_line"]

EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad command line (exit status 2)."""


def one_line(message: object) -> str:
    """``message`` with every run of whitespace (newlines included) folded to one space."""
    return " ".join(str(message).split())


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:  # str(KeyError) adds quotes
        return str(err.args[0])
    return str(err)


def exit_error(prog: str, message: object, status: int) -> NoReturn:
    """Print ``<prog>: error: <message>`` (one line) to stderr and exit with ``status``."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(status)


@contextlib.contextmanager
def errors(prog: str, *, usage: Sequence[type[BaseException]] = (),
           failure: Sequence[type[BaseException]] = ()) -> Iterator[None]:
    """Turn the listed exceptions raised inside the block into one-line errors: ConfigError,
    UsageError and ``usage`` exit 2, ``failure`` exits 1 (checked in that order)."""
    try:
        yield
    except (ConfigError, UsageError, *usage) as e:
        exit_error(prog, _message(e), EXIT_USAGE)
    except tuple(failure) as e:
        exit_error(prog, _message(e), EXIT_FAILURE)


def flags_parser(prog: str, parse: Callable[[list[str]], list[str]],
                 explain: Callable[[list[str], Exception], str | None] | None = None,
                 ) -> Callable[[list[str]], list[str]]:
    """Wrap a flag parser (e.g. ``absl.flags.FLAGS``, for ``app.run(main, flags_parser=...)``)
    so that any error while parsing is a usage error; ``explain(argv, err)`` may give a better
    message than the parser's own."""
    def parse_or_exit(argv: list[str]) -> list[str]:
        try:
            return parse(argv)
        except Exception as e:  # noqa: BLE001 - flag libraries raise many types
            exit_error(prog, (explain(argv, e) if explain else None) or _message(e), EXIT_USAGE)

    return parse_or_exit
