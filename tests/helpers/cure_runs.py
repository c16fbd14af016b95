"""cure-train as a user runs it, for the end-to-end tests: the command line, its environment
(one JAX CPU device and a compilation cache shared by the runs) and the config it loads."""
from __future__ import annotations

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny.py"
JAX_CACHE = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"cure-e2e-jax-cache-{os.getuid()}"


def train_env() -> dict[str, str]:
    """One CPU device (the fastest for the tiny models) and the shared compilation cache."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(JAX_CACHE),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("XLA_FLAGS", None)
    return env


def cure_train(workdir, *flags: str) -> list[str]:
    """The cure-train command line on configs/tiny.py (the README's first command)."""
    return [sys.executable, "-m", "cure_jax.train_main", f"--config={CONFIG}",
            f"--workdir={workdir}", *flags]


def tiny_config(variant: str = ""):
    """configs/tiny.py's ConfigDict (``variant``: "", "random" or "synthetic")."""
    from cure_jax.config import config_module
    return config_module(CONFIG).get_config(variant)
