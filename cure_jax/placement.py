"""Which GPUs of this host the JAX learner and the rollout server use, applied by cure-train.

Two config fields split a GPU host: ``rollout.devices`` (the rollout server's GPUs; "" = it
shares the learner's) and ``mesh.devices`` (the learner's; "" = every GPU of the host not given
to the rollout server). Both are comma-separated indices counted as CUDA counts them: positions
in an existing ``CUDA_VISIBLE_DEVICES`` when one is set (a scheduler gave the job GPUs 2,3,6,7:
index 0 is GPU 2), else the host's GPUs 0..n-1. The split is config, not a
``CUDA_VISIBLE_DEVICES=`` prefix a user can forget, and a bad one is a one-line ConfigError at
the door.

:func:`plan` resolves both lists to physical ids against this host's GPUs before anything
narrows this process's view; :func:`apply_to_learner` then narrows cure-train's own
``CUDA_VISIBLE_DEVICES`` (before JAX initialises a backend) and :func:`rollout_env` is the
rollout server's environment. On a host without GPUs (CPU, TPU) placement is a no-op, and
setting either field is an error. Standard library only: it runs before JAX or torch touch a
device.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

from rollout.contract.config import check, fail

__all__ = ["HOST_GPUS_VAR", "Placement", "apply_to_learner", "check_lists", "count_gpus",
           "launch_processes", "parse", "plan", "rollout_env"]

VISIBLE = "CUDA_VISIBLE_DEVICES"
# The host's GPUs (physical ids) as they were before apply_to_learner narrowed VISIBLE, so a
# later plan() in this process (the rollout-server source) still resolves against the host.
HOST_GPUS_VAR = "CURE_HOST_GPUS"
PROC_GPUS = pathlib.Path("/proc/driver/nvidia/gpus")


@dataclasses.dataclass(frozen=True)
class Placement:
    """The resolved split. Ids are physical: entries of the host's ``CUDA_VISIBLE_DEVICES``
    (indices or GPU-/MIG- UUIDs) or 0..n-1. A ``*_visible`` of None leaves that side's
    ``CUDA_VISIBLE_DEVICES`` as inherited (no GPUs, or no split configured)."""

    host: tuple[str, ...] = ()       # this host's GPUs; () = none
    learner: tuple[str, ...] = ()    # the learner's GPUs (all of host when no split)
    rollout: tuple[str, ...] = ()    # the rollout server's own GPUs; () = shares the learner's
    learner_visible: str | None = None
    rollout_visible: str | None = None


def parse(text: str, path: str) -> tuple[int, ...]:
    """The indices of a ``"4,5,6,7"`` list ("" = none); malformed or repeated is a ConfigError."""
    if not text.strip():
        return ()
    items = [s.strip() for s in text.split(",")]
    check(all(s.isascii() and s.isdigit() for s in items), path,
          f"must be comma-separated GPU indices like '4,5,6,7' (got {text!r})")
    ids = tuple(int(s) for s in items)
    for i in ids:
        check(ids.count(i) == 1, path, f"GPU {i} is listed twice (got {text!r})")
    return ids


def check_lists(mesh_devices: str, rollout_devices: str, p: str = "config") -> None:
    """The host-independent checks of the two lists (well-formed, no repeats, no GPU in both);
    ``Config.validate`` runs them, so ``load_config`` rejects them on any machine."""
    learner = parse(mesh_devices, f"{p}.mesh.devices")
    rollout = parse(rollout_devices, f"{p}.rollout.devices")
    for i in learner:
        check(i not in rollout, f"{p}.mesh.devices",
              f"GPU {i} is also in {p}.rollout.devices ({rollout_devices}); the learner and the "
              "rollout server need separate GPUs")


def count_gpus(proc_dir: str | os.PathLike = PROC_GPUS, nvidia_smi: str = "nvidia-smi") -> int:
    """NVIDIA GPUs on this host, without a GPU library: the driver's ``/proc`` entries, else
    ``nvidia-smi -L`` when it is installed, else 0."""
    proc = pathlib.Path(proc_dir)
    if proc.is_dir():
        return sum(1 for _ in proc.iterdir())
    exe = shutil.which(nvidia_smi)
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def _host(env: Mapping[str, str], gpus: int | None) -> tuple[tuple[str, ...], str]:
    """This host's GPUs as physical ids, and where they came from (for messages)."""
    for var in (HOST_GPUS_VAR, VISIBLE):
        if var in env:
            ids = tuple(s.strip() for s in env[var].split(",") if s.strip())
            return ids, f"{VISIBLE}={env[var]}" if var == VISIBLE else f"{HOST_GPUS_VAR}={env[var]}"
    n = count_gpus() if gpus is None else gpus
    return tuple(str(i) for i in range(n)), ""


def _span(n: int) -> str:
    return "0" if n == 1 else f"0-{n - 1}"


def launch_processes(env: Mapping[str, str], distributed: bool = False) -> int | None:
    """How many cure-train processes this launch has, as far as the environment tells
    (JAX_NUM_PROCESSES, SLURM_NTASKS); None when ``--distributed`` leaves it to JAX."""
    try:
        if env.get("JAX_COORDINATOR_ADDRESS"):
            return int(env["JAX_NUM_PROCESSES"])
        if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
            return int(env["SLURM_NTASKS"])
    except (KeyError, ValueError):
        return None
    return None if distributed else 1


def _check_mesh(mesh: Any, n: int, processes: int | None, where: str, p: str) -> None:
    """The mesh must cover the learner's GPUs of every process: data*fsdp*tp = n per host
    times the processes (only what can be known without JAX is checked)."""
    sizes = [mesh.data, mesh.fsdp, mesh.tp]
    known = math.prod(s for s in sizes if s != -1)
    what = f"the learner's {n} GPU{'s' if n != 1 else ''} of this host ({where})"
    if processes is not None:
        total = n * processes
        if processes > 1:
            what += f" x {processes} processes = {total}"
        if -1 in sizes:
            check(total % known == 0, f"{p}.mesh",
                  f"the given axis sizes multiply to {known}, which does not divide {what}")
        else:
            check(known == total, f"{p}.mesh", f"data*fsdp*tp = {known} but {what}")
    elif -1 not in sizes:
        check(known % n == 0, f"{p}.mesh",
              f"data*fsdp*tp = {known} is not a multiple of {what}")


def plan(cfg: Any, env: Mapping[str, str] | None = None, *, gpus: int | None = None,
         processes: int | None = None, p: str = "config") -> Placement:
    """Resolve ``cfg.mesh.devices`` and ``cfg.rollout.devices`` (a validated Config) against
    this host's GPUs: those of ``env``'s CUDA_VISIBLE_DEVICES when set, else ``gpus`` (default:
    :func:`count_gpus`). ``processes`` (from :func:`launch_processes`; None = unknown) lets the
    mesh size be checked against the learner's GPUs. Raises a one-line ConfigError."""
    env = os.environ if env is None else env
    check_lists(cfg.mesh.devices, cfg.rollout.devices, p)
    learner_pos = parse(cfg.mesh.devices, f"{p}.mesh.devices")
    rollout_pos = parse(cfg.rollout.devices, f"{p}.rollout.devices")
    host, source = _host(env, gpus)
    split = bool(learner_pos or rollout_pos)
    if not host:
        if split:
            name, text = (("rollout", cfg.rollout.devices) if rollout_pos
                          else ("mesh", cfg.mesh.devices))
            why = (f"{VISIBLE} is set but empty" if source
                   else f"{VISIBLE} is unset and no NVIDIA GPU is listed")
            fail(f"{p}.{name}.devices",
                 f"{text!r} names GPUs but this host has none ({why}); on CPU and TPU hosts leave "
                 f"it empty (--config.{name}.devices=); TPU chips are not split between the "
                 "learner and the rollout server")
        return Placement()
    n = len(host)
    has = f"it has {n}: {_span(n)}" + (f", {source}" if source else "")
    for name, pos in (("rollout", rollout_pos), ("mesh", learner_pos)):
        for i in pos:
            check(i < n, f"{p}.{name}.devices", f"GPU {i} is not on this host ({has})")
    rollout = tuple(host[i] for i in rollout_pos)
    if learner_pos:
        learner, where = tuple(host[i] for i in learner_pos), f"{p}.mesh.devices={cfg.mesh.devices}"
    else:
        learner = tuple(h for i, h in enumerate(host) if i not in rollout_pos)
        where = f"those not in {p}.rollout.devices" if rollout_pos else "all"
    check(bool(learner), f"{p}.mesh.devices",
          f"no GPU left for the learner: {p}.rollout.devices={cfg.rollout.devices} takes all "
          f"of this host's GPUs ({has})")
    if not split:
        return Placement(host=host, learner=host)
    _check_mesh(cfg.mesh, len(learner), processes, where, p)
    learner_visible = ",".join(learner)
    return Placement(host=host, learner=learner, rollout=rollout, learner_visible=learner_visible,
                     rollout_visible=",".join(rollout) or learner_visible)


def backends_initialized() -> bool:
    """Whether JAX has already picked its devices (then narrowing CUDA_VISIBLE_DEVICES is too
    late); never imports JAX itself."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False


def apply_to_learner(placement: Placement,
                     env: MutableMapping[str, str] | None = None) -> None:
    """Narrow this process's CUDA_VISIBLE_DEVICES to the learner's GPUs (no-op without a
    split). Must run before JAX initialises a backend: cure-train calls it right after the
    config is validated, before ``jax.distributed.initialize``."""
    if placement.learner_visible is None:
        return
    env = os.environ if env is None else env
    if env is os.environ and backends_initialized():
        raise RuntimeError("placement.apply_to_learner: JAX has already initialised its devices")
    env[HOST_GPUS_VAR] = ",".join(placement.host)
    env[VISIBLE] = placement.learner_visible


def rollout_env(placement: Placement, base_env: Mapping[str, str]) -> dict[str, str]:
    """The rollout server's environment: ``base_env`` with CUDA_VISIBLE_DEVICES set to the
    rollout GPUs as physical ids (the learner's when it has none of its own)."""
    env = dict(base_env)
    env.pop(HOST_GPUS_VAR, None)
    if placement.rollout_visible is not None:
        env[VISIBLE] = placement.rollout_visible
    return env
