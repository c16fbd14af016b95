"""Synthetic task generators: reference programs pass their tests in the real sandbox, wrong
programs fail them, instances are reproducible from seeds, splits are disjoint."""
from __future__ import annotations

import pathlib

import pytest

from rollout.problems import Problem
from rollout.tiny_tasks import (
    KINDS,
    generate_instance,
    kind_by_name,
    split_params,
    task_instances,
    task_problems,
)
from rollout.tiny_tasks.run_trusted import run_trusted


def test_about_a_dozen_kinds_with_disjoint_parameter_splits():
    assert len(KINDS) >= 12
    for kind in KINDS:
        train, held = set(split_params(kind, "train")), set(split_params(kind, "eval"))
        assert train and held, kind.name
        assert not train & held, kind.name
        assert train | held == set(kind.params), kind.name


def test_instances_reproducible_from_seed_and_seed_matters():
    a = generate_instance("sum_plus", 7, seed=3)
    b = generate_instance("sum_plus", 7, seed=3)
    c = generate_instance("sum_plus", 7, seed=4)
    assert a == b
    assert a.problem.to_dict() == b.problem.to_dict()
    assert a.problem.test_input != c.problem.test_input
    assert task_problems("eval") == task_problems("eval")


def test_splits_are_disjoint_problems():
    train, held = task_problems("train"), task_problems("eval")
    assert len(train) > 500 and len(held) >= 40
    assert all(isinstance(p, Problem) for p in train + held)
    assert not {p.task_id for p in train} & {p.task_id for p in held}
    assert not {p.question for p in train} & {p.question for p in held}
    assert {p.difficulty for p in held} == {k.name for k in KINDS}  # every kind is evaluated


def test_statement_names_the_parameter_and_tests_are_distinct():
    for inst in task_instances("eval"):
        p = inst.problem
        assert str(inst.param)[0] in p.question
        inputs = list(p.example_input) + list(p.test_input)
        assert len(set(inputs)) == len(inputs), p.task_id
        assert all(i.endswith("\n") for i in inputs)


def test_mutants_are_wrong_on_the_ground_truth_tests():
    for inst in task_instances("eval"):
        assert inst.mutants, inst.problem.task_id
        for m in inst.mutants:
            outs = [run_trusted(m, i) for i in inst.problem.test_input]
            assert any(o is None or o.split() != e.split()
                       for o, e in zip(outs, inst.problem.test_output)), (inst.problem.task_id, m)


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="unknown task kind 'nope'"):
        kind_by_name("nope")
    with pytest.raises(ValueError, match="unknown param"):
        generate_instance("sum_plus", 999, seed=0)
    with pytest.raises(ValueError, match="unknown task split"):
        task_instances("test")


@pytest.mark.slow
def test_reference_solutions_pass_and_mutants_fail_in_the_sandbox():
    """Every kind (all held-out instances + one training instance each) through the sandbox."""
    from sandbox import Sandbox, TestCase

    insts = task_instances("eval") + [task_instances("train", kinds=(k.name,))[0] for k in KINDS]
    groups = [([i.solution, *i.mutants],
               [TestCase(a, b) for a, b in i.problem.private_tests() + i.problem.public_tests()],
               i.problem.test_time_limit) for i in insts]
    with Sandbox(workers=2) as sb:
        results = sb.run_matrices(groups)
    for inst, res in zip(insts, results):
        passed = res.passed
        assert passed[0].all(), (inst.problem.task_id, res.verdicts[0])
        assert not passed[1:].all(axis=1).any(), inst.problem.task_id


def test_splits_export_as_stdio_json(tmp_path):
    from rollout.problems import load_problems
    from rollout.tiny_tasks.__main__ import main

    assert main(["--out", str(tmp_path)]) == 0
    assert load_problems(tmp_path / "eval.json") == task_problems("eval")
    assert load_problems(tmp_path / "train.json") == task_problems("train")


def test_shipped_task_files_match_the_generators():
    from rollout.problems import load_problems

    assets = pathlib.Path(__file__).resolve().parents[2] / "rollout" / "assets" / "tasks"
    assert load_problems(assets / "train.json") == task_problems("train")
    assert load_problems(assets / "eval.json") == task_problems("eval")
