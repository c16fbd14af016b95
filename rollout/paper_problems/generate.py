"""Build ``train.json`` and ``eval.json`` from ``specs.json`` by running the reference solutions.

``specs.json`` holds each embedded problem's statement, reference solution and test inputs
(statements and solutions as lists of lines). Expected outputs are not written there: every
expected output is what the problem's reference solution prints for that input, run as a real
process with this interpreter, so the shipped outputs are right by construction. Every
statement fixes the exact input and output format; inputs end with a newline. Run after
editing ``specs.json``:

    python -m rollout.paper_problems.generate          # rewrite the JSON files
    python -m rollout.paper_problems.generate --check  # exit 1 if the files are out of date
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile

from rollout.problems import Problem, problems_to_json, write_problems

TIME_LIMIT_S = 2.0      # the problems' test_time_limit; every solution needs well under it
_RUN_TIMEOUT_S = 30.0   # generous: generation must never be flaky on a loaded machine
HERE = pathlib.Path(__file__).resolve().parent
SPECS_PATH = HERE / "specs.json"
SPLITS = ("train", "eval")


@dataclasses.dataclass(frozen=True)
class Spec:
    """One embedded problem before its outputs are computed."""

    task_id: str
    difficulty: str
    question: str
    solution: str
    public: tuple[str, ...]
    private: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.public) <= 2:
            raise ValueError(f"{self.task_id}: needs 1-2 public tests, has {len(self.public)}")
        if len(self.private) < 5:
            raise ValueError(f"{self.task_id}: needs >= 5 private tests, has {len(self.private)}")
        for inp in self.public + self.private:
            if not inp.endswith("\n"):
                raise ValueError(f"{self.task_id}: test input {inp!r} must end with a newline")
        if len(set(self.public + self.private)) != len(self.public + self.private):
            raise ValueError(f"{self.task_id}: duplicate test inputs")


def load_specs(split: str, path: str | pathlib.Path = SPECS_PATH) -> list[Spec]:
    """The specs of one split (``train`` or ``eval``), in file order."""
    if split not in SPLITS:
        raise ValueError(f"unknown embedded split {split!r}; expected one of {SPLITS}")
    rows = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))[split]
    return [Spec(task_id=r["task_id"], difficulty=r["difficulty"],
                 question="\n".join(r["question"]) + "\n",
                 solution="\n".join(r["solution"]) + "\n",
                 public=tuple(r["public"]), private=tuple(r["private"]))
            for r in rows]


def run_solution(solution_path: str, stdin: str) -> str:
    """Run one solution file on ``stdin``; return its stdout (raise on any failure)."""
    proc = subprocess.run([sys.executable, "-I", "-S", solution_path], input=stdin,
                          capture_output=True, text=True, timeout=_RUN_TIMEOUT_S,
                          check=False)
    if proc.returncode != 0 or proc.stderr:
        raise RuntimeError(f"{solution_path} failed on input {stdin[:60]!r}: exit "
                           f"{proc.returncode}, stderr {proc.stderr[-400:]!r}")
    if not proc.stdout.strip():
        raise RuntimeError(f"{solution_path} printed nothing for input {stdin[:60]!r}")
    return proc.stdout


def _expected(stdout: str) -> str:
    # Stored like the reference data ("15", not "15\n"); comparison is token based anyway.
    return stdout.rstrip("\n")


def build_split(split: str, workers: int | None = None) -> list[Problem]:
    """Run every reference solution of ``split`` on all its inputs and build the Problems."""
    specs = load_specs(split)
    with tempfile.TemporaryDirectory(prefix="cure-embedded-") as tmp, \
            concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 2) as pool:
        jobs = {}
        for spec in specs:
            path = os.path.join(tmp, f"{spec.task_id}.py")
            with open(path, "w", encoding="utf-8") as f:
                f.write(spec.solution)
            for inp in spec.public + spec.private:
                jobs[(spec.task_id, inp)] = pool.submit(run_solution, path, inp)
        outputs = {key: _expected(fut.result()) for key, fut in jobs.items()}
    return [
        Problem(
            task_id=f"embedded/{spec.task_id}",
            question=spec.question,
            test_input=spec.private,
            test_output=tuple(outputs[(spec.task_id, i)] for i in spec.private),
            example_input=spec.public,
            example_output=tuple(outputs[(spec.task_id, i)] for i in spec.public),
            test_time_limit=TIME_LIMIT_S,
            dataset=f"embedded-{split}",
            difficulty=spec.difficulty,
            solutions=(spec.solution,),
        )
        for spec in specs
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when a shipped file differs")
    parser.add_argument("--out_dir", default=str(HERE))
    args = parser.parse_args(argv)
    stale = []
    for split in SPLITS:
        problems = build_split(split)
        dest = pathlib.Path(args.out_dir) / f"{split}.json"
        if args.check:
            current = dest.read_text(encoding="utf-8") if dest.exists() else ""
            if current != problems_to_json(problems):
                stale.append(str(dest))
        else:
            write_problems(problems, dest)
            print(f"wrote {dest}: {len(problems)} problems, "
                  f"{sum(p.num_tests + len(p.example_input) for p in problems)} tests")
    if stale:
        print("out of date (run python -m rollout.paper_problems.generate): " + ", ".join(stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
