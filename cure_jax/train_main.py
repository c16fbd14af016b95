"""cure-train: `cure-train --config=configs/tiny.py --workdir=DIR [--config.learner.lr=...]`.

Loads the ml_collections config (any field overridable on the command line), validates it
before any work (a bad field is one line on stderr, exit status 2) and hands over to
`cure_jax.train.train_and_evaluate(config, workdir)`, which resumes from the newest checkpoint
in the workdir. A config, checkpoint or rollout-server error during the run is one line on
stderr and exit status 1 (no traceback).
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, TensorBoard, config.json.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (multi-host launch on a cluster JAX "
                                 "auto-detects, e.g. TPU pods). Also on when JAX_COORDINATOR_ADDRESS or a "
                                 "multi-task SLURM job is detected.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from cure_jax.config import ConfigError
    from cure_jax.train import validate
    config = _CONFIG.value
    if config is None:
        print("cure-train: error: --config is required", file=sys.stderr)
        sys.exit(2)
    if not _WORKDIR.value:
        print("cure-train: error: --workdir is required", file=sys.stderr)
        sys.exit(2)
    try:
        validate(config)
    except ConfigError as e:
        print(f"cure-train: error: {e}", file=sys.stderr)
        sys.exit(2)
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax is chatty at INFO
    logging.getLogger("cure_jax").setLevel(logging.INFO)
    from cure_jax import distributed
    from cure_jax.checkpoint import CheckpointError
    from cure_jax.driver import RolloutServerError
    from cure_jax.train import train_and_evaluate
    distributed.initialize(force=_DISTRIBUTED.value)
    try:
        train_and_evaluate(config, _WORKDIR.value)
    except (CheckpointError, ConfigError, RolloutServerError) as e:  # each one line already
        print(f"cure-train: error: {e}", file=sys.stderr)
        sys.exit(1)


def _unknown_override(argv: list[str]) -> str | None:
    """The first `--config.a.b=...` override whose path the config file does not define."""
    import importlib.util
    cfg_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if cfg_arg is None:
        return None
    path, _, arg = cfg_arg.partition(":")
    try:
        spec = importlib.util.spec_from_file_location("_cure_train_config", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        base = mod.get_config(arg) if arg else mod.get_config()
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


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors (bad override path or value) instead of traces."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - flags/ml_collections raise many types
        msg = _unknown_override(argv) or " ".join(str(e).split())
        print(f"cure-train: error: {msg}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
