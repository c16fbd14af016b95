"""Experience sources of the trainer loop: `synthetic` (in process) and `cure` (a rollout server)."""
from __future__ import annotations

import pathlib
from typing import Any

from cure_jax.sources.base import Experience, ExperienceSource

__all__ = ["Experience", "ExperienceSource", "make_source"]


def make_source(cfg: Any, learner: Any, workdir: pathlib.Path) -> ExperienceSource:
    """The source `cfg.rollout.source` names, built for `learner` (nothing started yet)."""
    if cfg.rollout.source == "cure":
        from cure_jax.sources.rollout_server import RolloutServerSource
        return RolloutServerSource(cfg, learner, workdir)
    from cure_jax.sources.synthetic import SyntheticSource
    return SyntheticSource(cfg.rollout.synthetic, learner, cfg.seed)
