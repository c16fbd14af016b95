"""Multi-process start-up and the few host-to-host exchanges the trainer needs.

A run is multi-process when any of these is set: JAX_COORDINATOR_ADDRESS (with
JAX_NUM_PROCESSES and JAX_PROCESS_ID), a SLURM job with more than one task, or an explicit
`force=True` (`cure-train --distributed`: TPU pods and other clusters whose environment JAX
auto-detects). `initialize` must run before any other JAX call; on CPU the cross-process
collectives use gloo.

Every exchange goes through JAX's own collectives (`process_allgather`), so nothing but JAX
crosses a host boundary; with one process they return at once without touching a device.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)
_initialized = False


def is_multihost_launch(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    return int(env.get("SLURM_NTASKS", "1") or 1) > 1


def initialize(force: bool = False, env: dict[str, str] | None = None) -> bool:
    """Call jax.distributed.initialize() once when multi-process; return whether it did."""
    global _initialized
    env = dict(os.environ) if env is None else env
    if _initialized or not (force or is_multihost_launch(env)):
        return False
    kwargs = {}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
                  "num_processes": int(env["JAX_NUM_PROCESSES"]),
                  "process_id": int(env["JAX_PROCESS_ID"])}
    # CPU collectives across processes (a no-op for GPU and TPU backends).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    _initialized = True
    log.info("jax.distributed initialised: process %d of %d, %d devices",
             jax.process_index(), jax.process_count(), jax.device_count())
    return True


def coordinator_host() -> str:
    """The host name or address of process 0 (where the coordination service runs)."""
    from jax._src import distributed as _dist  # the address JAX itself connected to
    addr = _dist.global_state.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    return addr.rsplit(":", 1)[0].strip("[]") or "127.0.0.1"


def allgather_ints(values: np.ndarray | list[int]) -> list[np.ndarray]:
    """Every process's 1-D int64 array (lengths may differ), in process order."""
    local = np.asarray(values, np.int64).reshape(-1)
    if jax.process_count() == 1:
        return [local]
    from jax.experimental import multihost_utils
    sizes = np.asarray(multihost_utils.process_allgather(np.array([local.size], np.int64)))
    sizes = sizes.reshape(-1)
    padded = np.zeros(max(int(sizes.max()), 1), np.int64)
    padded[:local.size] = local
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [rows[p, :int(n)] for p, n in enumerate(sizes)]


def allgather_json(obj: Any) -> list[Any]:
    """Every process's JSON-able object, in process order (for statistics and metrics)."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)
    return [json.loads(a.astype(np.uint8).tobytes().decode()) for a in allgather_ints(data)]


def global_sum(value: int) -> int:
    """Sum of an integer over all processes."""
    return int(sum(int(a[0]) for a in allgather_ints([value])))


def barrier(name: str) -> None:
    """Wait until every process reached `name` (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
