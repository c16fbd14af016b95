"""Shared test set-up: CPU-only JAX with 8 fake devices, offline Hugging Face, repo paths."""
from __future__ import annotations

import os
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.helpers.cure_runs import xla_flags  # imports no jax

# Must happen before anything imports jax, vllm or transformers.
os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads (torch's) sleep instead of spinning on the cores the other worker uses.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# One persistent XLA compilation cache for every test process and every cure-train the tests
# start (they inherit the environment): the suite builds the same small models again and again,
# and compiling them is most of many tests' time. Keys cover the program, the flags and the
# versions; with a size bound JAX guards the directory with a file lock, so workers share it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO_ROOT / ".pytest_cache" / "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

import pytest


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


# `make test` runs the suite on every core (pytest-xdist, one module per worker at a time):
# these modules take minutes, so they start first and the short ones fill the other workers
# around them. Longest first; every other module keeps its collection order after them.
LONGEST_FIRST = (
    "e2e/test_tiny_learns.py", "e2e/test_cure_train_e2e.py", "e2e/test_multiprocess.py",
    "e2e/test_train_resume.py", "cure_jax/test_learner.py", "e2e/test_weight_push.py",
    "e2e/test_vllm_openai_server.py", "cure_jax/test_prompt_packing.py",
    "cure_jax/test_convert.py", "rollout/test_eval_main.py", "cure_jax/test_warmstart.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item: pytest.Item) -> int:
        rel = pathlib.Path(str(item.path)).relative_to(REPO_ROOT / "tests").as_posix()
        return rank.get(rel, len(rank))
    items.sort(key=key)  # stable: tests within a module keep their order
