"""cure-convert: move Qwen weights between Hugging Face directories and Orbax checkpoints.

    cure-convert hf-to-orbax --hf_dir=D --ckpt_dir=C [--param_dtype=float32]
    cure-convert orbax-to-hf --ckpt_dir=C --hf_dir=OUT [--base_hf_dir=D] [--dtype=bfloat16]
                             [--max_shard_size=5GB] [--step=N]
    cure-convert verify      --hf_dir=D [--ckpt_dir=C] [--atol=1e-3]

Orbax layouts read by orbax-to-hf / verify:
  * params-only (written by hf-to-orbax): C/params (an Orbax PyTree of the model state as a
    nested dict with string keys) and C/config.json (the HF config of the model);
  * training checkpoints of cure-train (cure_jax.checkpoint.Checkpointer): C/<step>/state with
    the train state's `params` inside; C may be the run's checkpoints directory (newest step, or
    --step), a run workdir holding checkpoints/, or one step directory. Only `params` is read.
    The model config then comes from --base_hf_dir (or C/config.json when present).

verify runs transformers in a subprocess (cure_jax never imports torch) on a few prompts,
runs the Flax model on the same tokens and ends with `max_abs_err=<a> max_rel_err=<r>`,
where r = max|ours - theirs| / max|theirs| over all non-padded positions; exit status 1 when
a > --atol.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Any

from absl import app, flags

from rollout.contract import checkpoint_layout, cli

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face model directory (input or output).")
_CKPT_DIR = flags.DEFINE_string("ckpt_dir", None, "Orbax checkpoint directory.")
_BASE_HF_DIR = flags.DEFINE_string("base_hf_dir", None,
                                   "orbax-to-hf: HF directory to take config.json and tokenizer "
                                   "files from.")
_DTYPE = flags.DEFINE_string("dtype", "auto", "orbax-to-hf: dtype of the written safetensors "
                             "(float32, bfloat16, float16; auto = the base config's torch_dtype, "
                             "else the checkpoint's).")
_PARAM_DTYPE = flags.DEFINE_string("param_dtype", "float32",
                                   "hf-to-orbax / verify: dtype of the Flax parameters.")
_MAX_SHARD = flags.DEFINE_string("max_shard_size", "5GB", "orbax-to-hf: safetensors file size cap.")
_STEP = flags.DEFINE_integer("step", None, "orbax-to-hf / verify: training step to read "
                             "(default: newest).")
_ATOL = flags.DEFINE_float("atol", 1e-3, "verify: fail (exit 1) when max_abs_err exceeds this.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 4, "verify: number of prompts.")

COMMANDS = ("hf-to-orbax", "orbax-to-hf", "verify")
PROG = "cure-convert"


class ConvertError(Exception):
    """A user-facing problem with the inputs (printed as one line, exit status 2)."""


# ---------------------------------------------------------------------------------------------
# Orbax params checkpoints
# ---------------------------------------------------------------------------------------------
def _nested_from_state(state) -> dict[str, Any]:
    from flax import nnx

    from cure_jax import layer_stack

    return layer_stack.nest([(tuple(map(str, path)), var.get_value())
                             for path, var in nnx.to_flat_state(state)])


def _lookup(nested: dict[str, Any], path: tuple, where: str) -> Any:
    node: Any = nested
    for part in path:
        try:
            node = node[str(part)]
        except (KeyError, TypeError, IndexError):
            raise ConvertError(f"{where}: checkpoint has no parameter "
                               f"{'/'.join(map(str, path))!r}") from None
    return node


def save_params_checkpoint(ckpt_dir: str | pathlib.Path, model_or_state, cfg) -> pathlib.Path:
    """Write the params-only layout: ckpt_dir/params (Orbax) + ckpt_dir/config.json."""
    import orbax.checkpoint as ocp
    from flax import nnx

    ckpt = pathlib.Path(ckpt_dir).absolute()
    params = ckpt / checkpoint_layout.PARAMS_DIR
    if params.exists():
        raise ConvertError(f"{params}: already exists (choose an empty --ckpt_dir)")
    ckpt.mkdir(parents=True, exist_ok=True)
    state = nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module) else model_or_state
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(params, _nested_from_state(state))
    checkpointer.wait_until_finished()
    (ckpt / checkpoint_layout.CONFIG_FILE).write_text(json.dumps(cfg.to_hf_dict(), indent=2))
    return ckpt


def locate_params(ckpt_dir: str | pathlib.Path, step: int | None = None) -> tuple[pathlib.Path, tuple[str, ...]]:
    """(Orbax PyTree directory, key prefix of the params inside it) for any supported layout
    (rollout.contract.checkpoint_layout)."""
    try:
        return checkpoint_layout.find_params(ckpt_dir, step)
    except checkpoint_layout.LayoutError as e:
        raise ConvertError(str(e)) from None


def checkpoint_config(ckpt_dir: str | pathlib.Path, base_hf_dir: str | None):
    """The model config: base_hf_dir/config.json when given, else the checkpoint's config.json."""
    from cure_jax.models.qwen import QwenConfig

    if base_hf_dir:
        return QwenConfig.from_hf_dir(base_hf_dir)
    ckpt = pathlib.Path(ckpt_dir).absolute()
    for cand in (ckpt / checkpoint_layout.CONFIG_FILE, ckpt.parent / checkpoint_layout.CONFIG_FILE):
        if cand.is_file():
            try:
                return QwenConfig.from_hf_dir(cand)
            except ValueError:
                continue  # e.g. a cure-train run config.json: not a HF config
    raise ConvertError(f"{ckpt}: no model config.json in the checkpoint; pass --base_hf_dir")


def restore_params(ckpt_dir: str | pathlib.Path, cfg, *, step: int | None = None,
                   param_dtype=None, mesh=None):
    """Read only the model parameters of a checkpoint into an nnx.State of a Qwen for `cfg`."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import orbax.checkpoint as ocp
    from flax import nnx

    from cure_jax import hf_io, layer_stack, sharding

    path, prefix = locate_params(ckpt_dir, step)
    meta = ocp.PyTreeCheckpointer().metadata(path)
    stored = getattr(meta, "item_metadata", None)
    stored = meta if stored is None else stored
    stored = getattr(stored, "tree", stored)  # Orbax's metadata object around a nested dict
    try:
        for part in prefix:
            stored = stored[part]
    except (KeyError, TypeError):
        raise ConvertError(f"{path}: no {'/'.join(prefix)!r} item in this checkpoint") from None
    abstract = nnx.state(hf_io.abstract_model(cfg, param_dtype or jnp.float32))
    shardings = sharding.state_shardings(abstract, mesh) if mesh is not None else None
    flat_sh = dict(nnx.to_flat_state(shardings)) if shardings is not None else {}
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    want = layer_stack.nest([
        (tuple(map(str, p)), jax.ShapeDtypeStruct(
            var.get_value().shape, var.get_value().dtype,
            sharding=flat_sh[p].get_value() if p in flat_sh else default))
        for p, var in nnx.to_flat_state(abstract)])
    older = layer_stack.unstacked_target(want, stored)  # written before the layers were stacked
    pairs = []
    for p, leaf in layer_stack.leaves(older or want):
        have = _lookup(stored, p, str(path))
        if tuple(have.shape) != tuple(leaf.shape):
            raise ConvertError(f"{path}: parameter {'/'.join(p)!r} has shape "
                               f"{tuple(have.shape)}, config expects {tuple(leaf.shape)}")
        dtype = param_dtype or np.dtype(have.dtype)
        pairs.append((prefix + p, jax.ShapeDtypeStruct(leaf.shape, dtype, sharding=leaf.sharding)))
    target = layer_stack.nest(pairs)
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    restored = ocp.PyTreeCheckpointer().restore(
        path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                          partial_restore=True))
    for part in prefix:
        restored = restored[part]
    if older is not None:
        restored = layer_stack.restack(restored, want)
    leaves = {p: var.replace(_lookup(restored, p, str(path))) for p, var in nnx.to_flat_state(abstract)}
    return nnx.from_flat_state(leaves)


# ---------------------------------------------------------------------------------------------
# verify: transformers in a subprocess
# ---------------------------------------------------------------------------------------------
def hf_reference_logits(hf_dir: str, num_prompts: int) -> dict[str, Any]:
    """transformers' logits for the verify prompts, computed by rollout.hf_reference in a
    subprocess (the torch side), so this process never imports torch."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ref.npz")
        proc = subprocess.run([sys.executable, "-m", "rollout.hf_reference", hf_dir, out,
                               str(num_prompts)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ConvertError(f"{hf_dir}: transformers could not run the model ({tail})")
        with np.load(out) as z:
            return {k: z[k] for k in z.files}


def compare_logits(ours, theirs, mask) -> tuple[float, float]:
    import numpy as np

    valid = mask.astype(bool)
    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))[valid]
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(theirs[valid]).max()) if diff.size else 1.0
    return max_abs, max_abs / max(scale, 1e-30)


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------
def _require(flag, name: str) -> str:
    if not flag.value:
        raise ConvertError(f"--{name} is required")
    return flag.value


def cmd_hf_to_orbax() -> None:
    from cure_jax import hf_io

    hf_dir, ckpt_dir = _require(_HF_DIR, "hf_dir"), _require(_CKPT_DIR, "ckpt_dir")
    model = hf_io.load_model(hf_dir, param_dtype=hf_io.parse_dtype(_PARAM_DTYPE.value))
    out = save_params_checkpoint(ckpt_dir, model, model.cfg)
    print(f"wrote {out} ({model.cfg.architecture}, {model.cfg.num_params():,} parameters)")


def cmd_orbax_to_hf() -> None:
    import numpy as np

    from cure_jax import hf_io

    ckpt_dir, out_dir = _require(_CKPT_DIR, "ckpt_dir"), _require(_HF_DIR, "hf_dir")
    locate_params(ckpt_dir, _STEP.value)  # fail early on a missing/odd checkpoint
    cfg = checkpoint_config(ckpt_dir, _BASE_HF_DIR.value)
    state = restore_params(ckpt_dir, cfg, step=_STEP.value)
    if _DTYPE.value == "auto":
        if _BASE_HF_DIR.value:
            dtype = hf_io.parse_dtype(cfg.torch_dtype)
        else:
            import jax
            dtype = np.dtype(jax.tree.leaves(state)[0].dtype)
    else:
        dtype = hf_io.parse_dtype(_DTYPE.value)
    out = hf_io.save_hf_dir(state, out_dir, cfg=cfg, dtype=dtype,
                            max_shard_size=_MAX_SHARD.value, base_hf_dir=_BASE_HF_DIR.value)
    print(f"wrote {out} ({cfg.architecture}, dtype {np.dtype(dtype).name})")


def cmd_verify() -> int:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from cure_jax import hf_io
    from cure_jax.models.qwen import QwenConfig

    hf_dir = _require(_HF_DIR, "hf_dir")
    param_dtype = hf_io.parse_dtype(_PARAM_DTYPE.value)
    if _CKPT_DIR.value:
        cfg = QwenConfig.from_hf_dir(hf_dir)
        state = restore_params(_CKPT_DIR.value, cfg, step=_STEP.value, param_dtype=param_dtype)
        graphdef, _ = nnx.split(hf_io.abstract_model(cfg, param_dtype))
        model = nnx.merge(graphdef, state)
    else:
        model = hf_io.load_model(hf_dir, param_dtype=param_dtype)
    ref = hf_reference_logits(hf_dir, _NUM_PROMPTS.value)
    tokens, mask = jnp.asarray(ref["tokens"], jnp.int32), jnp.asarray(ref["mask"], jnp.int32)
    ours = nnx.jit(lambda m, t, a: m.logits(m(t, attention_mask=a)))(model, tokens, mask)
    max_abs, max_rel = compare_logits(jax.device_get(ours), ref["logits"], ref["mask"])
    print(f"prompts={tokens.shape[0]} max_len={tokens.shape[1]} tokens={int(ref['mask'].sum())}")
    print(f"max_abs_err={max_abs:.6g} max_rel_err={max_rel:.6g}")
    return 0 if max_abs <= _ATOL.value else 1


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        cli.exit_error(PROG, f"usage: cure-convert {{{'|'.join(COMMANDS)}}} --flags ...",
                       cli.EXIT_USAGE)
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    # Bad inputs (missing or mismatched directories, checkpoints, configs) are usage errors.
    with cli.errors(PROG, usage=(ConvertError, ValueError, FileNotFoundError, KeyError)):
        if argv[1] == "hf-to-orbax":
            cmd_hf_to_orbax()
        elif argv[1] == "orbax-to-hf":
            cmd_orbax_to_hf()
        elif cmd_verify():
            cli.exit_error(PROG, f"verify: max_abs_err exceeds --atol={_ATOL.value}",
                           cli.EXIT_FAILURE)


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=cli.flags_parser(PROG, flags.FLAGS))


if __name__ == "__main__":
    run()
