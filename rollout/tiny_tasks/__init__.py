"""The tiny coder's stdin/stdout tasks (``configs/tiny.py``, ``rollout/assets/tasks``): seeded task
families with reference programs, plausible wrong programs and ground-truth tests, split by
parameter into disjoint train / held-out sets.

    from rollout.tiny_tasks import task_problems
    train = task_problems("train")    # list[rollout.problems.Problem]
    held_out = task_problems("eval")

stdlib only (plus rollout.problems).
"""
from rollout.tiny_tasks.generate import (
                                    SPLITS,
                                    TaskInstance,
                                    generate_instance,
                                    split_params,
                                    task_instances,
                                    task_problems,
)
from rollout.tiny_tasks.kinds import KINDS, TaskKind, kind_by_name

__all__ = ["KINDS", "SPLITS", "TaskInstance", "TaskKind", "generate_instance", "kind_by_name",
           "split_params", "task_instances", "task_problems"]
