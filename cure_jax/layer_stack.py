"""Checkpoints written before the decoder layers were stored stacked: read them into today's layout.

The model keeps each layer parameter as one array over all layers, [num_layers, ...], at a path
such as params/layers/mlp/up_proj (cure_jax.models.qwen.model.stack_layers). Checkpoints written
earlier hold one subtree per layer: params/layers/<i>/mlp/up_proj. Both the train-state restore
(cure_jax.checkpoint) and cure-convert's parameter restore read such a checkpoint through the
same two steps:

  older = unstacked_target(target, stored)   # the target in the per-layer layout, or None
  ... restore `older` with Orbax ...
  state = restack(restored, target)          # stack each array's layers onto its sharding

Everything here works on nested dicts keyed by strings (the form written to disk), whose leaves
are arrays, `jax.ShapeDtypeStruct`s or Orbax metadata.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

LAYERS = "layers"

Path = tuple[str, ...]


def leaves(nested: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """(path, leaf) of every leaf of a nested dict, in insertion order."""
    if isinstance(nested, Mapping):
        for key, value in nested.items():
            yield from leaves(value, prefix + (str(key),))
    else:
        yield prefix, nested


def lookup(nested: Any, path: Path) -> Any | None:
    """The leaf or subtree at `path`, or None when there is none."""
    node = nested
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def nest(pairs: list[tuple[Path, Any]]) -> dict[str, Any]:
    """Inverse of `leaves`."""
    out: dict[str, Any] = {}
    for path, leaf in pairs:
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = leaf
    return out


def _layers_at(path: Path) -> int | None:
    """Index of the "layers" component of a stacked array's path (None: not a layer array)."""
    for j, part in enumerate(path[:-1]):
        if part == LAYERS and not path[j + 1].isdigit():
            return j
    return None


def _one_layer(path: Path, j: int, i: int) -> Path:
    return path[:j + 1] + (str(i),) + path[j + 1:]


def _without_layer_axis(sharding: Any) -> Any:
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, P(*tuple(sharding.spec)[1:]),
                             memory_kind=sharding.memory_kind)
    return sharding


def unstacked_target(target: dict[str, Any], stored: Any) -> dict[str, Any] | None:
    """`target` (leaves: `jax.ShapeDtypeStruct`) in the per-layer layout, when the checkpoint
    whose metadata tree is `stored` was written in it; None when it holds today's layout."""
    def written_per_layer(path: Path) -> bool:
        j = _layers_at(path)
        return j is not None and lookup(stored, path) is None \
            and lookup(stored, _one_layer(path, j, 0)) is not None
    if not any(written_per_layer(path) for path, _ in leaves(target)):
        return None
    pairs = []
    for path, leaf in leaves(target):
        j = _layers_at(path)
        if j is None:
            pairs.append((path, leaf))
            continue
        sharding = _without_layer_axis(getattr(leaf, "sharding", None))
        pairs += [(_one_layer(path, j, i), jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype,
                                                                sharding=sharding))
                  for i in range(leaf.shape[0])]
    return nest(pairs)


def restack(restored: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """A tree restored in the per-layer layout -> `target`'s layout: each stacked array built
    from its layers on the target's sharding. The per-layer arrays are dropped from `restored`
    as they are used, so at most one array is held twice."""
    pairs = []
    for path, leaf in leaves(target):
        j = _layers_at(path)
        if j is None:
            pairs.append((path, lookup(restored, path)))
            continue
        parts = []
        for i in range(leaf.shape[0]):
            where = _one_layer(path, j, i)
            parts.append(lookup(restored, where[:-1]).pop(where[-1]))
        pairs.append((path, _stack_onto(getattr(leaf, "sharding", None))(*parts)))
    return nest(pairs)


@functools.lru_cache(maxsize=64)
def _stack_onto(sharding: Any):
    return jax.jit(lambda *xs: jnp.stack(xs), out_shardings=sharding)
