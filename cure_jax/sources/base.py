"""What the trainer loop asks of an experience source, and what a source hands back per step.

The loop (`cure_jax.train.train_and_evaluate`) is the same for every source; a source owns how
experience is made: the in-process synthetic source samples from the policy itself, the
rollout-server source drives a rollout server (requests in flight, staleness, restarts, the
weight push). One step reads::

    exp = source.next(step, params, version)    # experience of `step`
    state = learner.update(state, exp.batch)     # when exp.batch has rows
    source.publish(params, version, step)        # the new weights reach the sampler
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from cure_jax.experience import ExperienceBatch


@dataclasses.dataclass
class Experience:
    """One step's experience and what the source wants summarised about it."""

    batch: ExperienceBatch | None         # this process's rows to train on; None: no row of any
                                          # process carries signal (else maybe 0 rows here)
    version: int                          # policy version that sampled the rows
    rows: int                             # rows produced (trained or not)
    scalars: dict[str, float] = dataclasses.field(default_factory=dict)  # TensorBoard tag -> value
    texts: dict[str, str] = dataclasses.field(default_factory=dict)      # TensorBoard text tag -> text
    summary: str = ""                     # the source's part of the console line
    wait_s: float = 0.0                   # time the loop waited for this experience


class ExperienceSource(Protocol):
    """The trainer's only view of where experience comes from (see the module docstring)."""

    def start(self, params: Any, version: int, cursor: int) -> None:
        """Make the first experience of step `cursor` available (sampled with `version`)."""

    def next(self, step: int, params: Any, version: int) -> Experience:
        """The experience of `step`; `params`/`version` are the learner's current policy."""

    def publish(self, params: Any, version: int, step: int, updated: bool) -> dict[str, float]:
        """After the update of `step` (`updated`: the policy changed): hand the new policy on;
        returns timings as TensorBoard tag -> seconds."""

    def evaluate(self) -> dict[str, Any] | None:
        """Held-out metrics of the current policy, or None when the source has no evaluation."""

    def checkpoint_meta(self) -> dict[str, Any]:
        """JSON-able facts saved with each checkpoint (which source, its mode)."""

    def finish(self) -> None:
        """The run ended normally: wait for work still under way (the last weight load)."""

    def close(self) -> None:
        """Release processes and shared memory (also after an error)."""

    def abort(self) -> None:
        """Release processes and shared memory at once, from any thread, waiting for nothing
        (another process of the run died and this one is about to exit)."""
