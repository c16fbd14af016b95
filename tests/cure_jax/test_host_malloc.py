"""The allocator settings of a CPU learner (cure_jax.host_malloc), in real processes."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from cure_jax import host_malloc

# Programs whose 128 MB result and 64 MB temporary XLA allocates on every run and frees (the
# result when the child drops it). The child prints the page faults of their last 7 of 12 runs,
# and whether the settings could still be made once JAX had started.
CHILD = textwrap.dedent("""
    import resource, sys
    from cure_jax import host_malloc
    if sys.argv[1] == "keep":
        assert host_malloc.keep_freed_memory_on_cpu(host_malloc.MIN_PARAMS, {"JAX_PLATFORMS": "cpu"})
    import jax, jax.numpy as jnp
    result = jax.jit(lambda x: x * 2.0 + 1.0)
    temporary = jax.jit(lambda x: jnp.sum(jnp.exp(x).T[::2] * 3.0, axis=1))
    x = jnp.full((8192, 4096), 1e-3, jnp.float32)
    for i in range(12):
        if i == 5:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        result(x).block_until_ready(), temporary(x).block_until_ready()
    print("FAULTS", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print("LATE", host_malloc.keep_freed_memory_on_cpu(host_malloc.MIN_PARAMS, {"JAX_PLATFORMS": "cpu"}))
""")


def _child(mode: str) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    lines = dict(line.split(maxsplit=1) for line in out.splitlines() if " " in line)
    return int(lines["FAULTS"]), lines["LATE"]


@pytest.mark.skipif(host_malloc.glibc() is None, reason="glibc's allocator only")
def test_a_run_reuses_the_memory_the_last_one_freed():
    # glibc's defaults map every run's result and temporary in afresh: 7 x 192 MB = 344,064
    # pages. Kept, runs reuse what earlier ones freed: none, or a buffer now and then when a
    # free comes after the next allocation.
    default, _ = _child("default")
    kept, late = _child("keep")
    assert default > 300_000
    assert kept < default / 3
    assert late == "False"  # too late once JAX's threads have their own arenas


def test_the_learner_is_on_cpu_when_jax_platforms_says_so_or_nothing_else_is_installed():
    assert host_malloc.learner_on_cpu({"JAX_PLATFORMS": "cpu"})
    assert host_malloc.learner_on_cpu({"JAX_PLATFORMS": " cpu , cuda"})
    assert not host_malloc.learner_on_cpu({"JAX_PLATFORMS": "cuda,cpu"})
    assert not host_malloc.learner_on_cpu({"JAX_PLATFORMS": "tpu"})
    assert host_malloc.learner_on_cpu({}) == (not host_malloc.accelerator_installed())


def test_small_models_and_accelerators_keep_glibcs_defaults():
    # Both are refused before anything is set (this test process keeps its allocator).
    assert not host_malloc.keep_freed_memory_on_cpu(host_malloc.MIN_PARAMS - 1, {"JAX_PLATFORMS": "cpu"})
    assert not host_malloc.keep_freed_memory_on_cpu(10**9, {"JAX_PLATFORMS": "cuda"})
