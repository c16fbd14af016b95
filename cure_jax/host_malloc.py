"""glibc's allocator set up for a learner on CPU: memory a step frees is kept for the next one.

XLA:CPU allocates each program run's temporaries with malloc (hundreds of MB for a train step)
and frees them when the run ends. glibc serves a thread's allocations from that thread's own
arena, and an arena other than the main one maps every request over 64 MB afresh with mmap and
unmaps it on free, so each step page-faults all of its temporaries in again: 170,000 faults and
a seventh of the CPU time of an update in `benchmarks/learner.py` on 2 cores. With one arena,
no mmap and no trimming, the second step reuses the first one's pages and faults none.

The settings take full effect only when made before any other thread allocates (XLA's worker
threads keep the arena they started with): `cure-train` makes them before JAX starts
(`learner.cpu_keep_freed_memory`), as does `benchmarks/learner.py` on both sides. Only for
models from MIN_PARAMS parameters: below that a step's results stay under 64 MB and nothing is
mapped afresh, while one arena still slows XLA's compiler threads down (compiling took ~20%
longer), which a small model that compiles often (the tiny default) would only pay for. Not on
hosts with an accelerator: there the learner's memory is on the device, and large host buffers
(a checkpoint restored through the host) should go back to the system. The price on CPU: the
process keeps its peak heap until it exits.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil
from collections.abc import Mapping

# mallopt(3) parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

ACCELERATOR_MODULES = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin")
# From here a step's float32 parameter-sized results (new parameters, gradients) exceed the 64 MB
# of a glibc thread heap, so by default each is mapped afresh every step.
MIN_PARAMS = 64 * 2**20 // 4


def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (mallopt and its parameters as above), else None."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
    except (ValueError, OSError, AttributeError):
        return None
    return ctypes.CDLL("libc.so.6")


def accelerator_installed() -> bool:
    """Whether JAX could find a GPU/TPU backend here: libtpu, a CUDA plugin, or any JAX plugin
    (entry point or `jax_plugins` namespace module). Checked without importing JAX."""
    if any(importlib.util.find_spec(m) is not None for m in ACCELERATOR_MODULES):
        return True
    if list(importlib.metadata.entry_points(group="jax_plugins")):
        return True
    spec = importlib.util.find_spec("jax_plugins")
    return bool(spec and spec.submodule_search_locations
                and any(pkgutil.iter_modules(spec.submodule_search_locations)))


def learner_on_cpu(env: Mapping[str, str] | None = None) -> bool:
    """Whether JAX will run on CPU: JAX_PLATFORMS names cpu first, or it is unset and no
    accelerator backend is installed."""
    platforms = (os.environ if env is None else env).get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not accelerator_installed()


def keep_freed_memory() -> bool:
    """One malloc arena for every thread, no mmap'ed chunks, no trimming of the heap's top.
    Returns whether the settings were made (glibc only). Call before JAX starts its threads."""
    libc = glibc()
    if libc is None:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in
               ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)))


def keep_freed_memory_on_cpu(num_params: int, env: Mapping[str, str] | None = None) -> bool:
    """`keep_freed_memory` when the learner will run on CPU, its model has at least MIN_PARAMS
    parameters and JAX has not started yet; returns whether it was made."""
    from cure_jax.placement import backends_initialized
    return (num_params >= MIN_PARAMS and learner_on_cpu(env) and not backends_initialized()
            and keep_freed_memory())
