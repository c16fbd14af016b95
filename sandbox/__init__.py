"""Hardened, fast execution of untrusted Python programs against stdin/stdout tests.

    from sandbox import Sandbox, Limits, TestCase, Verdict
    with Sandbox(limits=Limits(time_s=1.0)) as sb:
        res = sb.run_matrix(programs, tests)     # res.passed: bool [n_programs, n_tests]

Stdlib + numpy only. See ``sandbox.isolation`` for the isolation modes and ``sandbox.compare``
for the one output comparator.
"""
from .compare import outputs_match
from .pool import IsolationUnavailable, Sandbox, SandboxStats
from .types import Execution, Limits, MatrixResult, TestCase, Verdict

__all__ = ["Sandbox", "SandboxStats", "IsolationUnavailable", "Limits", "TestCase", "Verdict", "Execution",
           "MatrixResult", "outputs_match"]
