"""Synthetic stdin/stdout tasks: a dozen seeded task families with reference programs, plausible
wrong programs and ground-truth tests, split by parameter into disjoint train / held-out sets.

    from rollout.tasks import task_problems
    train = task_problems("train")    # list[rollout.problems.Problem]
    held_out = task_problems("eval")

stdlib only (plus rollout.problems): safe to import from the learner side.
"""
from rollout.tasks.generate import (
                                    SPLITS,
                                    TaskInstance,
                                    generate_instance,
                                    split_params,
                                    task_instances,
                                    task_problems,
)
from rollout.tasks.kinds import KINDS, TaskKind, kind_by_name

__all__ = ["KINDS", "SPLITS", "TaskInstance", "TaskKind", "generate_instance", "kind_by_name",
           "split_params", "task_instances", "task_problems"]
