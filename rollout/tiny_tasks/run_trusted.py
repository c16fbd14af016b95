"""Run one of *our own* reference programs in-process on a stdin string (trusted code only).

The generators compute ground-truth outputs by running the reference solution, so the program
text is the single source of truth; doing it in-process (``exec`` with redirected stdin/stdout)
is thousands of times faster than a sandboxed process. Never call this on model output: untrusted
programs go through :mod:`sandbox`. The tests re-check every reference in the real sandbox.
"""
from __future__ import annotations

import contextlib
import io
import sys

__all__ = ["run_trusted"]


def run_trusted(program: str, stdin: str) -> str | None:
    """stdout of ``program`` on ``stdin``, or None when it raises (used to screen mutants)."""
    out = io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(program, "<reference>", "exec"), {"__name__": "__main__"})  # noqa: S102 (our own reference programs only)
    except Exception:  # noqa: BLE001 (a mutant may crash; None means "not this output")
        return None
    finally:
        sys.stdin = saved
    return out.getvalue()
