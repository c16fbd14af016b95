"""Value types of the sandbox API: limits, test cases, verdicts and results.

Everything here is plain data (dataclasses, an enum, numpy arrays) so that callers in other
packages can build and inspect requests without touching processes.
"""
from __future__ import annotations

import dataclasses
import enum
import math

import numpy as np

__all__ = ["Verdict", "TestCase", "Limits", "Execution", "MatrixResult"]


class Verdict(enum.IntEnum):
    """Outcome of one execution. SANDBOX_ERROR is an infrastructure failure, never the program's."""

    OK = 0
    WRONG_ANSWER = 1
    TIME_LIMIT = 2
    MEMORY_LIMIT = 3
    OUTPUT_LIMIT = 4
    RUNTIME_ERROR = 5
    COMPILE_ERROR = 6
    SANDBOX_ERROR = 7


@dataclasses.dataclass(frozen=True)
class TestCase:
    """One stdin/stdout test: the program reads ``input`` and must print ``output``."""

    __test__ = False  # not a pytest class

    input: str
    output: str

    def __post_init__(self) -> None:
        if not isinstance(self.input, str) or not isinstance(self.output, str):
            raise TypeError(
                f"TestCase.input and TestCase.output must be str, got "
                f"{type(self.input).__name__} and {type(self.output).__name__}")


def _positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"Limits.{name} must be a positive finite number, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits of one execution.

    The time limit is CPU time: ``cpu = time_s * time_multiplier`` (``time_s`` is replaced by a
    problem's own ``test_time_limit`` when one is passed). A program is also killed once its wall
    time exceeds ``cpu * wall_factor`` (sleepers, programs starved by load), which is reported as
    TIME_LIMIT as well. Judging by CPU time keeps verdicts stable when the machine is loaded.
    """

    time_s: float = 1.0
    memory_mb: int = 1024          # RLIMIT_AS of the program
    output_mb: float = 16.0        # cap on stdout and on stderr, each (enforced by the kernel)
    time_multiplier: float = 1.0
    wall_factor: float = 2.0
    processes: int = 16            # RLIMIT_NPROC: processes + threads of the program (each
    #                                process has its own RLIMIT_AS, so this also bounds memory)
    open_files: int = 64           # RLIMIT_NOFILE
    tmp_mb: int = 32               # size of the private /tmp (and /dev/shm) of one execution
    input_mb: float = 64.0         # largest stdin accepted
    float_tol: float | None = None  # opt-in float tolerance of the comparator

    def __post_init__(self) -> None:
        for name in ("time_s", "memory_mb", "output_mb", "time_multiplier", "wall_factor",
                     "processes", "open_files", "tmp_mb", "input_mb"):
            _positive(name, getattr(self, name))
        if self.wall_factor < 1.0:
            raise ValueError(f"Limits.wall_factor must be >= 1, got {self.wall_factor!r}")
        if self.memory_mb < 64:
            raise ValueError(f"Limits.memory_mb must be >= 64 (Python needs it), got "
                             f"{self.memory_mb!r}")
        if self.float_tol is not None:
            _positive("float_tol", self.float_tol)

    def cpu_limit(self, time_limit_s: float | None = None) -> float:
        """CPU seconds allowed: the problem's limit (or ``time_s``) times the multiplier."""
        base = self.time_s if time_limit_s is None else time_limit_s
        _positive("time_limit_s", base)
        return float(base) * self.time_multiplier

    @property
    def output_bytes(self) -> int:
        return int(self.output_mb * 1024 * 1024)

    @property
    def input_bytes(self) -> int:
        return int(self.input_mb * 1024 * 1024)


@dataclasses.dataclass
class Execution:
    """One program run on one stdin, as seen by the orchestrator."""

    verdict: Verdict
    stdout: str
    stderr_tail: str
    exit_code: int | None      # None when killed by a signal or not run
    signal: int | None         # the signal that ended it, if any
    wall_s: float
    cpu_s: float
    detail: str = ""           # why a SANDBOX_ERROR / limit verdict was given

    @property
    def passed(self) -> bool:
        return self.verdict == Verdict.OK


@dataclasses.dataclass
class MatrixResult:
    """Verdicts of programs x tests; ``passed`` is ``verdicts == OK``."""

    verdicts: np.ndarray   # object array of Verdict, [n_programs, n_tests]
    wall_s: np.ndarray     # float64, same shape
    cpu_s: np.ndarray      # float64, same shape

    @property
    def passed(self) -> np.ndarray:
        codes = np.vectorize(int, otypes=[np.int8])(self.verdicts) if self.verdicts.size \
            else np.zeros(self.verdicts.shape, np.int8)
        return codes == int(Verdict.OK)

    @property
    def shape(self) -> tuple[int, int]:
        return self.verdicts.shape  # type: ignore[return-value]

    @classmethod
    def empty(cls, n_programs: int, n_tests: int) -> "MatrixResult":
        verdicts = np.empty((n_programs, n_tests), dtype=object)
        verdicts.fill(Verdict.SANDBOX_ERROR)
        return cls(verdicts, np.zeros((n_programs, n_tests)), np.zeros((n_programs, n_tests)))
