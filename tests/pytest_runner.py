"""Runs one test file through pytest: the `main` of every py_test in BUILD.

    python tests/pytest_runner.py tests/sandbox/test_compare.py [pytest options ...]

Bazel runs a py_test's main as a script and passes when it exits 0, so a test file run directly
would pass without running any test. This runner hands the file to pytest and exits with
pytest's status: a failing test (or a file with none: status 5) fails its target.
"""
from __future__ import annotations

import sys

import pytest


def main(argv: list[str]) -> int:
    if not argv or not argv[0].endswith(".py"):
        print("usage: pytest_runner.py TEST_FILE.py [pytest options ...]", file=sys.stderr)
        return 2
    return int(pytest.main([argv[0], "-q", "-p", "no:cacheprovider", *argv[1:]]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
