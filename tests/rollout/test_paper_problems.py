"""The embedded dataset: shape, disjoint splits, in sync with its specs, and every reference
solution passes every one of its tests (through the sandbox, and as plain processes)."""
from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile

import pytest

from rollout.paper_problems import generate
from rollout.problems import (
    EMBEDDED_SPLITS,
    Problem,
    embedded_dir,
    embedded_problems,
    load_problems_file,
)

ALL = embedded_problems("all")


def all_tests(p: Problem) -> list[tuple[str, str]]:
    return p.public_tests() + p.private_tests()


def test_sizes_and_shape():
    train, evals = embedded_problems("train"), embedded_problems("eval")
    assert len(train) + len(evals) >= 40
    assert len(train) >= 28 and len(evals) >= 10
    for p in ALL:
        assert p.num_tests >= 5, p.task_id
        assert 1 <= len(p.example_input) <= 2, p.task_id
        assert len(p.solutions) == 1, p.task_id
        assert p.difficulty in ("easy", "medium", "hard"), p.task_id
        assert "Input" in p.question and "Output" in p.question, p.task_id
        assert p.task_id.startswith("embedded/")
        assert all(i.endswith("\n") for i, _ in all_tests(p)), p.task_id
        assert all(o.strip() for _, o in all_tests(p)), p.task_id
    assert {p.dataset for p in train} == {"embedded-train"}
    assert {p.dataset for p in evals} == {"embedded-eval"}


def test_splits_are_disjoint_and_all_is_their_union():
    train, evals = embedded_problems("train"), embedded_problems("eval")
    assert not {p.task_id for p in train} & {p.task_id for p in evals}
    assert not {p.question for p in train} & {p.question for p in evals}
    assert not {p.solutions[0] for p in train} & {p.solutions[0] for p in evals}
    assert ALL == train + evals
    assert len({p.task_id for p in ALL}) == len(ALL)
    with pytest.raises(ValueError, match="unknown embedded split 'test'"):
        embedded_problems("test")


def test_every_shipped_row_validates_and_is_in_sync_with_the_specs():
    for split in generate.SPLITS:
        specs = generate.load_specs(split)
        path = embedded_dir() / f"{split}.json"
        rows = json.loads(path.read_text(encoding="utf-8"))
        problems = [Problem.from_dict(r, source=str(path), row=i) for i, r in enumerate(rows)]
        assert problems == load_problems_file(path, dataset=f"embedded-{split}")
        assert [p.task_id for p in problems] == [f"embedded/{s.task_id}" for s in specs], (
            "stale: run python -m rollout.paper_problems.generate")
        for p, s in zip(problems, specs):
            assert (p.question, p.solutions[0]) == (s.question, s.solution), p.task_id
            assert p.example_input == s.public and p.test_input == s.private, p.task_id


def test_embedded_problems_returns_fresh_lists():
    a = embedded_problems("train")
    a.clear()
    assert len(embedded_problems("train")) >= 28
    assert EMBEDDED_SPLITS == ("train", "eval")


# -- running the reference solutions -------------------------------------------------------


def _run_plain(solution_path: str, stdin: str, timeout_s: float) -> str:
    proc = subprocess.run([sys.executable, "-I", "-S", solution_path], input=stdin,
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    assert proc.returncode == 0, proc.stderr[-500:]
    return proc.stdout


@pytest.mark.slow
def test_reference_solutions_pass_all_tests_as_plain_processes():
    """Each reference solution, run as a real process on each test, prints the expected
    output up to whitespace (the comparison CURE uses: whitespace-split tokens)."""
    failures = []
    with tempfile.TemporaryDirectory() as tmp, \
            concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        jobs = []
        for k, p in enumerate(ALL):
            path = os.path.join(tmp, f"sol{k}.py")
            with open(path, "w", encoding="utf-8") as f:
                f.write(p.solutions[0])
            for j, (inp, out) in enumerate(all_tests(p)):
                # Generous wall timeout: the CPU is shared; correctness is what is checked.
                jobs.append((p.task_id, j, out, pool.submit(_run_plain, path, inp, 30.0)))
        for task_id, j, expected, fut in jobs:
            got = fut.result()
            if got.split() != expected.split():
                failures.append(f"{task_id} test {j}: expected {expected[:60]!r}, got {got[:60]!r}")
    assert not failures, "\n".join(failures)
    assert len(jobs) == sum(len(all_tests(p)) for p in ALL) >= 40 * 6


def _sandbox_api():
    try:
        from sandbox import Sandbox, TestCase
    except ImportError as e:
        pytest.skip(f"sandbox package does not provide Sandbox/TestCase yet ({e})")
    return Sandbox, TestCase


@pytest.mark.slow
def test_reference_solutions_pass_all_tests_in_the_sandbox():
    """The same check through the project's sandbox (run_matrices over all problems)."""
    Sandbox, TestCase = _sandbox_api()
    jobs = [([p.solutions[0]], [TestCase(i, o) for i, o in all_tests(p)], p.test_time_limit)
            for p in ALL]
    with Sandbox() as sb:
        results = sb.run_matrices(jobs)
    assert len(results) == len(ALL)
    failures = []
    for p, res in zip(ALL, results):
        assert res.passed.shape == (1, len(all_tests(p)))
        for j in range(res.passed.shape[1]):
            if not bool(res.passed[0, j]):
                failures.append(f"{p.task_id} test {j}: {res.verdicts[0, j]}")
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_generator_reproduces_the_shipped_files_byte_for_byte(tmp_path):
    assert generate.main(["--out_dir", str(tmp_path)]) == 0
    for split in generate.SPLITS:
        assert ((tmp_path / f"{split}.json").read_bytes()
                == (embedded_dir() / f"{split}.json").read_bytes()), split
    assert generate.main(["--check"]) == 0


def test_load_specs_rejects_an_unknown_split():
    with pytest.raises(ValueError, match="unknown embedded split 'test'"):
        generate.load_specs("test")
