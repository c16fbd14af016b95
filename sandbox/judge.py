"""Turn a worker's raw report into a verdict (pure function: same report, same verdict)."""
from __future__ import annotations

import signal

from .compare import outputs_match
from .types import Verdict

_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc",
                   "out of memory")


def _memory_failure(stderr_tail: str) -> bool:
    lines = [ln for ln in stderr_tail.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    return any(m in last for m in _MEMORY_MARKERS)


def classify(report: dict, stdout: str | None, stderr_tail: str, expected: str | None,
             cpu_limit: float, float_tol: float | None = None, oom: bool = False
             ) -> tuple[Verdict, str]:
    """Verdict and a short reason, in this order of precedence:
    compile error, output limit, time limit (wall kill or CPU over the limit), abnormal exit
    (memory if the program died of an allocation failure or ``oom`` says the cgroup's OOM killer
    struck during it, runtime error otherwise), then the
    comparison with ``expected`` (None: no comparison, a clean exit is OK)."""
    stage = report.get("stage", "")
    if stage.endswith("C"):
        return Verdict.COMPILE_ERROR, "compile error"
    if report.get("out_over") or report.get("err_over"):
        which = "stdout" if report.get("out_over") else "stderr"
        return Verdict.OUTPUT_LIMIT, f"{which} over the output cap"
    if report.get("timed_out"):
        return Verdict.TIME_LIMIT, "killed at the wall-clock limit"
    if float(report.get("cpu_s", 0.0)) > cpu_limit:
        return Verdict.TIME_LIMIT, f"CPU time {report['cpu_s']:.3f}s over {cpu_limit:.3f}s"
    sig = report.get("signal")
    code = report.get("exit_code")
    if sig is not None or code != 0:
        if oom:
            return Verdict.MEMORY_LIMIT, "killed by the OOM killer of its memory cgroup"
        if _memory_failure(stderr_tail):
            return Verdict.MEMORY_LIMIT, "allocation failed under the memory limit"
        if sig is not None:
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            return Verdict.RUNTIME_ERROR, f"killed by {name}"
        return Verdict.RUNTIME_ERROR, f"exit code {code}"
    if expected is None:
        return Verdict.OK, ""
    if outputs_match(stdout or "", expected, float_tol=float_tol):
        return Verdict.OK, ""
    return Verdict.WRONG_ANSWER, "output differs"
