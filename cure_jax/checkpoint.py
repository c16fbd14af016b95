"""Orbax checkpoints of the learner: arrays (params, optimizer state, step, RNG) plus the
trainer's JSON state (data cursor and anything else it needs to continue exactly). The
directory names are rollout.contract.checkpoint_layout's (the rollout side reads them too).

* async saves (arrays are copied to host before `save` returns; writing runs in background),
* keep-N policy, resume from the latest step in the directory,
* SIGTERM/SIGINT set a flag the training loop polls; it then saves and exits,
* a corrupt or incompatible checkpoint raises `CheckpointError` naming the step directory and
  the first mismatching array, instead of an exception from deep inside Orbax/TensorStore.

Arrays are stored as a nested dict keyed by their pytree path, so any pytree (nnx states,
optax states, namedtuples) round-trips and mismatches are reported by name.
"""
from __future__ import annotations

import contextlib
import logging
import pathlib
import shutil
import signal
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from cure_jax import layer_stack
from rollout.contract import checkpoint_layout as layout

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored into the requested state (one-line message)."""


# ------------------------------------------------------------------------------ path trees
def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _paths_and_leaves(tree: Any) -> tuple[list[tuple[str, ...]], list[Any], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [tuple(_key_name(k) for k in path) for path, _ in flat]
    return paths, [leaf for _, leaf in flat], treedef


def to_nested(tree: Any) -> dict[str, Any]:
    """Any pytree -> nested dict {path component: ...: leaf} (what is written to disk)."""
    paths, leaves, _ = _paths_and_leaves(tree)
    return layer_stack.nest([(path or ("_",), leaf) for path, leaf in zip(paths, leaves)])


def _lookup(nested: Any, path: tuple[str, ...]) -> Any:
    node = nested
    for part in path or ("_",):
        if not isinstance(node, dict) or part not in node:
            raise KeyError("/".join(path))
        node = node[part]
    return node


def from_nested(nested: dict[str, Any], like: Any) -> Any:
    """Inverse of `to_nested`, using `like` for the tree structure."""
    paths, _, treedef = _paths_and_leaves(like)
    return jax.tree_util.tree_unflatten(treedef, [_lookup(nested, p) for p in paths])


# ------------------------------------------------------------------------------ signals
class StopSignal:
    """Remembers SIGTERM/SIGINT so the loop can checkpoint and exit cleanly at a step boundary."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> StopSignal:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self._event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum
        self._event.set()
        log.warning("received signal %d: will checkpoint and stop after this step", signum)

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# ------------------------------------------------------------------------------ manager
class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with two items: `state` (arrays) and `driver` (JSON)."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                            enable_async_checkpointing=async_save)
        handlers = {layout.STATE_ITEM: ocp.StandardCheckpointHandler(),
                    layout.DRIVER_ITEM: ocp.JsonCheckpointHandler()}
        self._mngr = ocp.CheckpointManager(self.directory, options=opts, item_handlers=handlers)
        self._writing: int | None = None  # the step whose (async) write may still be running

    # -- queries
    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def step_dir(self, step: int) -> pathlib.Path:
        return layout.step_dir(self.directory, step)

    # -- save
    def save(self, step: int, state: Any, driver: dict[str, Any] | None = None, *, force: bool = True) -> bool:
        """Save arrays of `state` and the JSON-able `driver` dict at `step` (async if enabled).

        The previous write finishes first, so a failure (a full disk, say) is a CheckpointError
        naming the step that could not be written; the checkpoints before it stay intact."""
        self.wait()
        args = ocp.args.Composite(**{layout.STATE_ITEM: ocp.args.StandardSave(to_nested(state)),
                                     layout.DRIVER_ITEM: ocp.args.JsonSave(dict(driver or {}))})
        self._writing = step
        with self._write_errors():
            return self._mngr.save(step, args=args, force=force)

    def wait(self) -> None:
        """Block until background writes are finished (call before exiting)."""
        with self._write_errors():
            self._mngr.wait_until_finished()
        self._writing = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._mngr.close()

    @contextlib.contextmanager
    def _write_errors(self):
        """Any failure of a write as one CheckpointError line naming the step's directory."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types
            step, self._writing = self._writing, None
            text = str(e)
            cause = f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"
            if "No space left on device" in text:
                free = shutil.disk_usage(self.directory).free / (1 << 20)
                cause = f"No space left on device, {free:.1f} MiB free in {self.directory}"
            where = self.step_dir(step) if step is not None else self.directory
            raise CheckpointError(f"checkpoint {where}: could not be written "
                                  f"({cause})") from None

    # -- restore
    def _stored_tree(self, step: int) -> Any:
        """The metadata tree of the arrays stored at `step`."""
        where = self.step_dir(step)
        try:
            meta = self._mngr.item_metadata(step)
            stored = meta[layout.STATE_ITEM] if meta is not None else None
        except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged metadata
            raise CheckpointError(f"checkpoint {where}: unreadable metadata ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
        if stored is None:
            raise CheckpointError(f"checkpoint {where}: no {layout.STATE_ITEM!r} item (incomplete or not a "
                                  "cure-train checkpoint)")
        return getattr(stored, "tree", stored)  # Orbax's metadata object around a nested dict

    def _check_compatible(self, step: int, target_nested: dict[str, Any], stored: Any) -> None:
        where = self.step_dir(step)
        want_paths, want_leaves, _ = _paths_and_leaves(target_nested)
        have_paths, have_leaves, _ = _paths_and_leaves(stored)
        have = dict(zip(have_paths, have_leaves))
        for path, leaf in zip(want_paths, want_leaves):
            name = "/".join(path)
            if path not in have:
                raise CheckpointError(f"checkpoint {where}: incompatible, array {name!r} is missing")
            h = have[path]
            hs, ws = tuple(getattr(h, "shape", ())), tuple(np.shape(leaf))
            if hs != ws:
                raise CheckpointError(f"checkpoint {where}: incompatible, array {name!r} has shape "
                                      f"{hs}, expected {ws}")
            hd = getattr(h, "dtype", None)
            if hd is not None and np.dtype(hd) != np.dtype(leaf.dtype):
                raise CheckpointError(f"checkpoint {where}: incompatible, array {name!r} has dtype "
                                      f"{np.dtype(hd)}, expected {np.dtype(leaf.dtype)}")
        extra = set(have) - set(want_paths)
        if extra:
            raise CheckpointError(f"checkpoint {where}: incompatible, unexpected array "
                                  f"{'/'.join(min(extra))!r}")

    def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        """Restore `step` into the structure, shapes, dtypes and shardings of `like`.

        `like` may hold arrays or `jax.ShapeDtypeStruct`s with shardings; arrays land directly
        on those shardings. A checkpoint written with one subtree per decoder layer (before the
        layers were stacked) is read in that layout and stacked (cure_jax.layer_stack).
        Returns (state, driver dict).
        """
        if step not in self.all_steps():
            raise CheckpointError(f"checkpoint {self.step_dir(step)}: no such step "
                                  f"(available: {self.all_steps()})")

        def abstract(x):
            sh = getattr(x, "sharding", None)
            return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sh)
        target = to_nested(jax.tree.map(abstract, like))
        stored = self._stored_tree(step)
        older = layer_stack.unstacked_target(target, stored)
        if older is not None:
            log.info("checkpoint %s: one subtree per layer (written before the layers were "
                     "stacked); stacking them on restore", self.step_dir(step))
        self._check_compatible(step, older or target, stored)
        args = ocp.args.Composite(**{layout.STATE_ITEM: ocp.args.StandardRestore(older or target),
                                     layout.DRIVER_ITEM: ocp.args.JsonRestore()})
        try:
            out = self._mngr.restore(step, args=args)
        except Exception as e:  # noqa: BLE001 - surface any storage failure as one clear line
            msg = str(e).splitlines()[0] if str(e) else ""
            raise CheckpointError(f"checkpoint {self.step_dir(step)}: corrupt or unreadable "
                                  f"({type(e).__name__}: {msg[:300]})") from None
        state = out[layout.STATE_ITEM]
        if older is not None:
            state = layer_stack.restack(state, target)
        return from_nested(state, like), dict(out[layout.DRIVER_ITEM] or {})

    def restore_latest(self, like: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, driver) of the newest checkpoint, or None when the directory has none."""
        step = self.latest_step()
        if step is None:
            return None
        state, driver = self.restore(step, like)
        return step, state, driver
