"""cure-train as a user runs it, for the end-to-end tests: the command line, its environment
(one JAX CPU device; the test session's compilation cache, tests/conftest.py) and the config it
loads."""
from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny.py"


def xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS of a test process: `devices` fake CPU devices (None: XLA's default of one),
    and XLA's LLVM backend at optimization level 0. The suite's programs are small and are
    compiled far more often than they run long, so compiling them fast (half the CPU time of
    the learner tests) beats running them fast. Runs of the tiny coder, where the learner's run
    time counts, use the default level (`train_env`)."""
    count = f"--xla_force_host_platform_device_count={devices} " if devices else ""
    return count + "--xla_backend_optimization_level=0"


def train_env() -> dict[str, str]:
    """One CPU device (the fastest for the tiny models); the compilation cache is inherited.
    OMP_WAIT_POLICY is left to cure-train, which sets its rollout server's, as for a user."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    env.pop("OMP_WAIT_POLICY", None)
    return env


def cure_train(workdir, *flags: str, variant: str = "") -> list[str]:
    """The cure-train command line on configs/tiny.py (the README's first command)."""
    config = f"{CONFIG}:{variant}" if variant else str(CONFIG)
    return [sys.executable, "-m", "cure_jax.train_main", f"--config={config}",
            f"--workdir={workdir}", *flags]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(workdir: pathlib.Path, processes: int, *flags: str, variant: str = "",
           devices: int = 2, port: int | None = None) -> list[subprocess.Popen]:
    """cure-train as `processes` local processes of one run (the README's two-process launch,
    `devices` fake CPU devices each); stdout/stderr of process i go to `<workdir>.p<i>.out/.err`."""
    port = port or free_port()
    out = []
    for i in range(processes):
        env = dict(train_env(), XLA_FLAGS=xla_flags(devices))
        if processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                       JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
        base = f"{workdir}.p{i}"
        with open(f"{base}.out", "w") as so, open(f"{base}.err", "w") as se:
            out.append(subprocess.Popen(cure_train(workdir, *flags, variant=variant), stdout=so,
                                        stderr=se, env=env, cwd=str(ROOT)))
    return out


def output(workdir: pathlib.Path, index: int, stream: str = "out") -> str:
    """What process `index` of a `launch` printed so far."""
    return pathlib.Path(f"{workdir}.p{index}.{stream}").read_text()


def tiny_config(variant: str = ""):
    """configs/tiny.py's ConfigDict (``variant``: "", "random" or "synthetic")."""
    from cure_jax.config import config_module
    return config_module(CONFIG).get_config(variant)
