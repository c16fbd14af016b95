"""How our Orbax checkpoints are laid out on disk, and how to recognise one (stdlib only).

The learner writes two layouts and the rollout side must find the weights in both without
importing Orbax or jax (``cure-eval`` converts a checkpoint with the ``cure-convert``
subprocess), so the names live here, once:

* params-only (``cure-convert hf-to-orbax``): ``C/params/`` (an Orbax PyTree of the model
  parameters) and ``C/config.json`` (the HF config of the model);
* training checkpoints (``cure_jax.checkpoint.Checkpointer``): a run workdir holds
  ``checkpoints/``, which holds one directory per step, named by the step number; each step
  directory holds the items ``state/`` (the train state, parameters under ``params``) and
  ``driver/`` (the trainer's JSON state).
"""
from __future__ import annotations

import os
import pathlib

__all__ = [
    "CHECKPOINTS_DIR",
    "CONFIG_FILE",
    "DRIVER_ITEM",
    "PARAMS_DIR",
    "PARAMS_KEY",
    "STATE_ITEM",
    "LayoutError",
    "checkpoint_steps",
    "find_params",
    "is_hf_dir",
    "is_orbax_checkpoint",
    "is_step_dir",
    "step_dir",
]

PARAMS_DIR = "params"  # params-only layout: the PyTree directory
CONFIG_FILE = "config.json"  # params-only layout: the model's HF config
CHECKPOINTS_DIR = "checkpoints"  # in a run workdir: the Checkpointer's directory
STATE_ITEM = "state"  # in a step directory: the train state (arrays)
DRIVER_ITEM = "driver"  # in a step directory: the trainer's JSON state
PARAMS_KEY = "params"  # in the train state: the model parameters
_ORBAX_METADATA = ("_CHECKPOINT_METADATA", "_METADATA")  # files Orbax writes itself

Path = str | os.PathLike[str]


class LayoutError(ValueError):
    """A directory that holds no checkpoint of ours, or not the step asked for (one line)."""


def step_dir(root: Path, step: int) -> pathlib.Path:
    """The directory of ``step`` inside a checkpoints directory."""
    return pathlib.Path(root) / str(step)


def is_step_dir(path: Path) -> bool:
    """Whether ``path`` is one training step of a checkpoints directory (it holds ``state/``)."""
    p = pathlib.Path(path)
    return p.is_dir() and (p / STATE_ITEM).is_dir()


def checkpoint_steps(root: Path) -> list[int]:
    """The complete steps (numbered directories holding ``state/``) in ``root``, ascending."""
    return sorted(int(p.name) for p in pathlib.Path(root).iterdir()
                  if p.name.isdigit() and is_step_dir(p))


def is_hf_dir(path: Path) -> bool:
    """Whether ``path`` is a Hugging Face model directory (config.json and weights)."""
    p = pathlib.Path(path)
    return (p / CONFIG_FILE).exists() and (
        any(p.glob("*.safetensors")) or any(p.glob("pytorch_model*.bin")))


def is_orbax_checkpoint(path: Path) -> bool:
    """Whether directory ``path`` looks like one of our Orbax layouts: params-only, a run's
    checkpoints directory (numbered steps), a run workdir (``checkpoints/``) or one step
    directory. A HF directory never is one."""
    p = pathlib.Path(path)
    if is_hf_dir(p):
        return False
    markers = (PARAMS_DIR, STATE_ITEM, CHECKPOINTS_DIR, *_ORBAX_METADATA)
    return any((p / m).exists() for m in markers) or any(
        q.is_dir() and q.name.isdigit() for q in p.iterdir())


def find_params(ckpt_dir: Path, step: int | None = None) -> tuple[pathlib.Path, tuple[str, ...]]:
    """(Orbax PyTree directory, key prefix of the parameters inside it) of any of our layouts:
    params-only, one step directory, a checkpoints directory or a run workdir (newest step,
    or ``step``). Raises :class:`LayoutError`."""
    ckpt = pathlib.Path(ckpt_dir).absolute()
    if not ckpt.is_dir():
        raise LayoutError(f"{ckpt}: checkpoint directory not found")
    if (ckpt / PARAMS_DIR).is_dir() and step is None:
        return ckpt / PARAMS_DIR, ()
    if is_step_dir(ckpt):
        return ckpt / STATE_ITEM, (PARAMS_KEY,)
    root = ckpt / CHECKPOINTS_DIR if (ckpt / CHECKPOINTS_DIR).is_dir() else ckpt
    steps = checkpoint_steps(root)
    if not steps:
        raise LayoutError(f"{ckpt}: no Orbax checkpoint here (expected {PARAMS_DIR}/, "
                          f"<step>/{STATE_ITEM}/ or {CHECKPOINTS_DIR}/<step>/{STATE_ITEM}/)")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise LayoutError(f"{root}: no step {step} (available: {steps})")
    return step_dir(root, step) / STATE_ITEM, (PARAMS_KEY,)
