"""cure-train: `cure-train --config=configs/tiny.py --workdir=DIR [--config.learner.lr=...]`.

Loads the ml_collections config (any field overridable on the command line), validates it
before any work and hands over to `cure_jax.train.train_and_evaluate(config, workdir)`, which
resumes from the newest checkpoint in the workdir. On a GPU host it first gives the learner and
the rollout server their GPUs (`mesh.devices`, `rollout.devices`; cure_jax.placement), before
JAX initialises a backend. Errors follow rollout.contract.cli: one line on stderr, exit status 2
for a bad command line or config (before any work starts), 1 for a checkpoint or rollout-server
failure during the run (no traceback).
"""
from __future__ import annotations

import logging
import os

from absl import app, flags
from ml_collections import config_flags

from cure_jax import host_malloc
from rollout.contract import cli

PROG = "cure-train"

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, TensorBoard, config.json.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False,
                             "Plan the run's memory and stop: compile the learner's programs for "
                             "the config's largest micro-batch on abstract weights, print per-device "
                             "and host shared memory, exit 1 when a device would not hold it "
                             "(cure_jax.dry_run). Starts nothing, writes nothing.")
_DRY_RUN_DEVICES = flags.DEFINE_integer("dry_run_devices", 0,
                                        "With --dry_run: plan on this many fake CPU devices "
                                        "instead of this host's (0 = the real ones).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (multi-host launch on a cluster JAX "
                                 "auto-detects, e.g. TPU pods). Also on when JAX_COORDINATOR_ADDRESS or a "
                                 "multi-task SLURM job is detected.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.exit_error(PROG, f"unexpected arguments: {argv[1:]}", cli.EXIT_USAGE)
    from cure_jax.config import load_config
    config = _CONFIG.value
    if config is None:
        cli.exit_error(PROG, "--config is required", cli.EXIT_USAGE)
    if not _WORKDIR.value:
        cli.exit_error(PROG, "--workdir is required", cli.EXIT_USAGE)
    from cure_jax import placement
    if _DRY_RUN_DEVICES.value and not _DRY_RUN.value:
        cli.exit_error(PROG, "--dry_run_devices needs --dry_run", cli.EXIT_USAGE)
    if _DRY_RUN.value:
        from cure_jax.dry_run import without_inputs
        with cli.errors(PROG):
            cfg = load_config(without_inputs(config))
        _dry_run(cfg, _DRY_RUN_DEVICES.value)
        return
    with cli.errors(PROG):
        cfg = load_config(config)
        # This host's GPU split (mesh.devices / rollout.devices), resolved to physical ids and
        # checked against the host here, then applied to this process before JAX picks devices.
        where = placement.plan(cfg, processes=placement.launch_processes(os.environ,
                                                                          _DISTRIBUTED.value))
    placement.apply_to_learner(where)
    if cfg.learner.cpu_keep_freed_memory:
        host_malloc.keep_freed_memory_on_cpu(cfg.model.qwen_config().num_params())
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax is chatty at INFO
    logging.getLogger("cure_jax").setLevel(logging.INFO)
    from cure_jax import distributed
    from cure_jax.checkpoint import CheckpointError
    from cure_jax.train import train_and_evaluate
    from rollout.contract.control import RolloutServerError
    from rollout.contract.segments import ShmError
    distributed.initialize(force=_DISTRIBUTED.value)
    with cli.errors(PROG, failure=(CheckpointError, RolloutServerError, ShmError)):  # one line each
        train_and_evaluate(config, _WORKDIR.value)


def _dry_run(cfg, fake_devices: int) -> None:
    """`--dry_run`: the memory plan on this host's learner devices (placement applied) or on
    `fake_devices` CPU devices; one-line error and exit 1 when a device would not hold it."""
    from cure_jax import placement
    if fake_devices:
        import jax
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", fake_devices)
    else:
        with cli.errors(PROG):
            where = placement.plan(cfg, processes=1)
        placement.apply_to_learner(where)
    from cure_jax.dry_run import DoesNotFit, dry_run
    with cli.errors(PROG, failure=(DoesNotFit,)):
        dry_run(cfg, fake_devices)


def _unknown_override(argv: list[str], err: Exception | None = None) -> str | None:
    """The first `--config.a.b=...` override whose path the config file does not define."""
    from cure_jax.config import config_file
    cfg_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if cfg_arg is None:
        return None
    path, _, arg = cfg_arg.partition(":")
    try:
        base = config_file(path, arg or None)
    except Exception:  # noqa: BLE001 - the flag parser reports load errors itself
        return None
    for a in argv:
        if not a.startswith("--config.") or "=" not in a:
            continue
        dotted = a[len("--config."):].split("=", 1)[0]
        node = base
        for part in dotted.split("."):
            try:
                node = node[part]
            except (KeyError, TypeError, AttributeError, IndexError):
                return f"config.{dotted}: unknown field (command-line override)"
    return None


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=cli.flags_parser(PROG, flags.FLAGS, _unknown_override))


if __name__ == "__main__":
    run()
