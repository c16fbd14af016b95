"""Multi-host start-up: `jax.distributed.initialize()` when launched on several hosts, else nothing.

A run is multi-host when any of these is set: JAX_COORDINATOR_ADDRESS (with JAX_NUM_PROCESSES
and JAX_PROCESS_ID), a SLURM job with more than one task, or an explicit `force=True` (TPU pods
and other clusters whose environment JAX auto-detects). Must run before any other JAX call.
"""
from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)
_initialized = False


def is_multihost_launch(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    return int(env.get("SLURM_NTASKS", "1") or 1) > 1


def initialize(force: bool = False, env: dict[str, str] | None = None) -> bool:
    """Call jax.distributed.initialize() once when multi-host; return whether it did."""
    global _initialized
    env = dict(os.environ) if env is None else env
    if _initialized or not (force or is_multihost_launch(env)):
        return False
    kwargs = {}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
                      "num_processes": int(env["JAX_NUM_PROCESSES"]),
                      "process_id": int(env["JAX_PROCESS_ID"])}
    jax.distributed.initialize(**kwargs)
    _initialized = True
    log.info("jax.distributed initialised: process %d of %d, %d devices",
             jax.process_index(), jax.process_count(), jax.device_count())
    return True
