"""Hugging Face <-> Flax weights: streamed safetensors import onto shardings, export in HF layout.

Our parameters keep HF's element order (cure_jax.models.qwen.params: at most a reshape), so
import reads each tensor lazily from memory-mapped safetensors (single file or sharded with an
index json) and builds each device's shard with `jax.make_array_from_callback` from just that
slice of the map; a dtype cast (bf16 file -> fp32 master weights) runs on the devices. Host
memory holds at most one shard's bytes at a time, never the model twice.

Export walks the same table the other way (cast on device when asked, one copy to host) and
yields HF-named, HF-layout numpy arrays one parameter at a time; `save_hf_dir` streams them into
size-sharded safetensors plus config and tokenizer files, a directory that transformers and
vLLM load. The weight sync uses `write_hf_arrays` instead: each device shard is copied straight
into its place in the WeightChannel's shared memory (one copy per byte, no host copy of the
model, not even of one whole tensor); with several processes, each writes the shards it
holds once `weight_export` has re-sharded the parameters to a whole copy per host.

The safetensors format is small enough to read and write directly (8-byte little-endian header
length, JSON header {name: {dtype, shape, data_offsets}}, raw bytes), which also gives bfloat16
through ml_dtypes where the numpy backend of the safetensors package has none.
"""
from __future__ import annotations

import functools
import json
import pathlib
import shutil
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from cure_jax import sharding as sharding_lib
from cure_jax.models.qwen.config import QwenConfig
from cure_jax.models.qwen.model import Qwen
from cure_jax.models.qwen.params import (
    ParamSpec,
    flax_to_hf,
    hf_to_flax,
    ignorable_hf_tensor,
    param_table,
    rows_by_array,
)

# Files copied from a base HF directory next to converted weights.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json",
                   "chat_template.jinja", "chat_template.json", "qwen.tiktoken")

# ---------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------
_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def dtype_name(dtype: np.dtype) -> str:
    dt = np.dtype(dtype)
    if dt not in _NAMES:
        raise ValueError(f"dtype {dt} cannot be stored in safetensors")
    return _NAMES[dt]


class SafetensorsFile:
    """Lazy view of one .safetensors file: `names()`, `shape(name)`, `get(name)` (a memmap view)."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        try:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path}: file not found") from None
        except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.path}: not a safetensors file ({e})") from None
        self.metadata = header.pop("__metadata__", {}) or {}
        self._header = header
        self._data_start = 8 + n
        self._mm = None

    def names(self) -> list[str]:
        return list(self._header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        code = self._header[name]["dtype"]
        if code not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {code}")
        return _DTYPES[code]

    def get(self, name: str) -> np.ndarray:
        if name not in self._header:
            raise KeyError(f"{self.path}: no tensor {name!r}")
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        info = self._header[name]
        begin, end = info["data_offsets"]
        dt = self.dtype(name)
        raw = self._mm[self._data_start + begin:self._data_start + end]
        return raw.view(dt).reshape(info["shape"])


def write_safetensors(path: str | pathlib.Path, specs: Sequence[tuple[str, tuple[int, ...], np.dtype]],
                      arrays: Iterable[np.ndarray], metadata: Mapping[str, str] | None = None) -> int:
    """Write tensors whose names/shapes/dtypes are known up front, consuming `arrays` one by one.

    Only one tensor is held at a time. Returns the number of bytes written.
    """
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dt in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
        header[name] = {"dtype": dtype_name(dt), "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path = pathlib.Path(path)
    written = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        it = iter(arrays)
        for name, shape, dt in specs:
            try:
                a = next(it)
            except StopIteration:
                raise ValueError(f"{path}: ran out of arrays at {name!r}") from None
            if tuple(a.shape) != tuple(shape) or a.dtype != np.dtype(dt):
                raise ValueError(f"{path}: tensor {name!r} is {a.dtype}{tuple(a.shape)}, "
                                 f"header says {np.dtype(dt)}{tuple(shape)}")
            a = np.ascontiguousarray(a)
            f.write(memoryview(a.reshape(-1).view(np.uint8)))
            written += a.nbytes
    return written


class CheckpointReader:
    """All tensors of a HF directory: model.safetensors, or shards listed in an index json."""

    def __init__(self, hf_dir: str | pathlib.Path):
        self.hf_dir = pathlib.Path(hf_dir)
        if not self.hf_dir.is_dir():
            raise FileNotFoundError(f"{self.hf_dir}: HF directory not found")
        index = self.hf_dir / "model.safetensors.index.json"
        single = self.hf_dir / "model.safetensors"
        self._where: dict[str, str] = {}
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index}: invalid safetensors index ({e!r})") from None
            self._where = dict(weight_map)
        elif single.is_file():
            self._where = {n: single.name for n in SafetensorsFile(single).names()}
        else:
            files = sorted(self.hf_dir.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"{self.hf_dir}: no model.safetensors or "
                                        "model.safetensors.index.json")
            for p in files:
                for n in SafetensorsFile(p).names():
                    self._where[n] = p.name
        self._files: dict[str, SafetensorsFile] = {}

    def names(self) -> list[str]:
        return list(self._where)

    def file_of(self, name: str) -> pathlib.Path:
        return self.hf_dir / self._where[name]

    def get(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise KeyError(f"{self.hf_dir}: missing tensor {name!r}")
        fname = self._where[name]
        if fname not in self._files:
            path = self.hf_dir / fname
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in the index for {name!r} but missing")
            self._files[fname] = SafetensorsFile(path)
        return self._files[fname].get(name)


# ---------------------------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------------------------
def _state_of(target: nnx.Module | nnx.State) -> nnx.State:
    return nnx.state(target) if isinstance(target, nnx.Module) else target


def _leaf_value(v: Any) -> Any:
    return v.get_value() if hasattr(v, "get_value") else v.value


def _config_of(target: Any, cfg: QwenConfig | None) -> QwenConfig:
    if cfg is not None:
        return cfg
    if isinstance(target, Qwen):
        return target.cfg
    raise ValueError("a QwenConfig is needed when the target is a bare state (pass cfg=...)")


def load_hf_params(hf_dir: str | pathlib.Path, target: nnx.Module | nnx.State,
                   mesh: jax.sharding.Mesh | None = None, *, cfg: QwenConfig | None = None,
                   rules: Mapping[str, Any] | None = None) -> nnx.State:
    """Read a HF checkpoint into the layout, dtype and sharding of `target`.

    target: a Qwen model (updated in place) or its (abstract) state, e.g. from
      `nnx.state(nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0))))` (then the table comes
      from `cfg`, or from hf_dir/config.json when cfg is None).
    mesh: shard each parameter by the logical-axis rules on this mesh; without it, a leaf that
      already carries a sharding keeps it and the rest go to the default device.
    Returns the filled state (same tree as `nnx.state(model)`).
    """
    if cfg is None and not isinstance(target, Qwen):
        cfg = QwenConfig.from_hf_dir(hf_dir)
    cfg = _config_of(target, cfg)
    state = _state_of(target)
    reader = CheckpointReader(hf_dir)
    table = param_table(cfg)
    known = {s.hf_name for s in table}
    unexpected = [n for n in reader.names() if n not in known and not ignorable_hf_tensor(n, cfg)]
    if unexpected:
        raise ValueError(f"{reader.hf_dir}: tensor {unexpected[0]!r} is not a parameter of "
                         f"{cfg.architecture} with {cfg.num_hidden_layers} layers "
                         f"({len(unexpected)} unexpected in all)")
    shardings = sharding_lib.state_shardings(state, mesh, rules) if mesh is not None else None
    flat = dict(nnx.to_flat_state(state))
    flat_shardings = dict(nnx.to_flat_state(shardings)) if shardings is not None else {}
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if set(flat) != {s.flax_path for s in table}:
        missing = sorted(map(str, {s.flax_path for s in table} - set(flat)))
        extra = sorted(map(str, set(flat) - {s.flax_path for s in table}))
        raise ValueError(f"model state does not match the {cfg.family} table: "
                         f"missing {missing[:3]}, extra {extra[:3]}")
    for spec in table:
        if spec.hf_name not in reader.names():
            raise ValueError(f"{reader.hf_dir}: missing tensor {spec.hf_name!r} "
                             f"(needed by {cfg.architecture})")
        hf = reader.get(spec.hf_name)
        if tuple(hf.shape) != spec.hf_shape:
            raise ValueError(f"{reader.file_of(spec.hf_name)}: tensor {spec.hf_name!r} has shape "
                             f"{tuple(hf.shape)}, config expects {spec.hf_shape}")
    new_leaves = {}
    for path, specs in rows_by_array(table).items():
        var = flat[path]
        leaf = _leaf_value(var)
        if path in flat_shardings:
            shd = _leaf_value(flat_shardings[path])
        else:
            shd = getattr(leaf, "sharding", None) or default
        arr = _place(specs, reader, shd, np.dtype(leaf.dtype), cfg.num_hidden_layers)
        new_leaves[path] = var.replace(arr)
    new_state = nnx.from_flat_state(new_leaves)
    if isinstance(target, nnx.Module):
        nnx.update(target, new_state)
    return new_state


@functools.lru_cache(maxsize=64)
def _cast_fn(dtype: str, out: jax.sharding.Sharding | None):
    return jax.jit(lambda x: x.astype(dtype), out_shardings=out)


def _place(specs: list[ParamSpec], reader: CheckpointReader, target: jax.sharding.Sharding,
           dtype: np.dtype, num_layers: int) -> jax.Array:
    """The HF tensors of one model array (one tensor, or every layer's for a stacked array)
    -> that array on `target`: each device copies only its slice of the memory-mapped files (in
    the files' dtype); a cast, when needed, runs on the devices."""
    srcs = [hf_to_flax(spec, reader.get(spec.hf_name)) for spec in specs]
    stacked = specs[0].layer is not None

    def shard(idx: tuple) -> np.ndarray:
        # Copy out of the map: the CPU backend would otherwise alias the file's pages, and the
        # "loaded" weights would change (or fault) when the file is rewritten.
        if not stacked:
            return np.array(srcs[0][idx], copy=True, order="C")
        return np.stack([srcs[i][idx[1:]] for i in range(num_layers)[idx[0]]])
    staged = jax.make_array_from_callback(specs[0].stored_shape(num_layers), target, shard)
    if staged.dtype == dtype:
        return staged
    return _cast_fn(np.dtype(dtype).name, target)(staged)


def abstract_model(cfg: QwenConfig, param_dtype=jnp.float32, dtype=jnp.float32) -> Qwen:
    """A shape-only Qwen (no parameter memory allocated)."""
    return nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0), param_dtype=param_dtype, dtype=dtype))


def load_model(hf_dir: str | pathlib.Path, mesh: jax.sharding.Mesh | None = None,
               param_dtype=jnp.float32, dtype=jnp.float32, **cfg_overrides: Any) -> Qwen:
    """Build a Qwen from a HF directory without random initialisation: config + streamed weights."""
    cfg = QwenConfig.from_hf_dir(hf_dir, **cfg_overrides)
    graphdef, abstract_state = nnx.split(abstract_model(cfg, param_dtype, dtype))
    state = load_hf_params(hf_dir, abstract_state, mesh, cfg=cfg)
    return nnx.merge(graphdef, state)


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def iter_hf_arrays(target: nnx.Module | nnx.State, dtype: Any = np.float32, *,
                   cfg: QwenConfig | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (HF name, HF-layout numpy array in `dtype`) one parameter at a time, in HF order."""
    cfg = _config_of(target, cfg)
    flat = dict(nnx.to_flat_state(_state_of(target)))
    out_dtype = np.dtype(dtype)
    for spec in param_table(cfg):
        if spec.flax_path not in flat:
            raise ValueError(f"model state has no parameter {'/'.join(map(str, spec.flax_path))} "
                             f"(needed for {spec.hf_name})")
        x = _leaf_value(flat[spec.flax_path])
        if spec.layer is not None:
            x = x[spec.layer]                            # one layer of the stacked array
        if np.dtype(x.dtype) != out_dtype:
            x = _cast_fn(out_dtype.name, None)(x)        # cast on device: fast, one pass
            host = _to_numpy(x)                          # a fresh buffer: safe to hand out
        else:
            host = np.array(_to_numpy(x), copy=True)     # never alias a (donatable) device buffer
        yield spec.hf_name, flax_to_hf(spec, host)


class ArrayWriter(Protocol):
    """Where :func:`write_hf_arrays` puts tensors: ``view`` returns a writable numpy array of
    that shape and dtype, filled in place (``rollout.contract.weight_channel.WeightWriter``)."""

    def view(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray: ...


def _shard_key(index: tuple) -> tuple:
    return tuple((s.start, s.stop, s.step) for s in index)


def _unique_shards(x: jax.Array) -> list[Any]:
    """The addressable shards of `x`, one per distinct slice (replicas dropped)."""
    seen: set[tuple] = set()
    out = []
    for shard in x.addressable_shards:
        key = _shard_key(shard.index)
        if key not in seen:
            seen.add(key)
            out.append(shard)
    return out


def _extent(index: tuple, shape: tuple[int, ...]) -> int:
    return int(np.prod([len(range(*s.indices(n))) for s, n in zip(index, shape)], dtype=np.int64))


@functools.lru_cache(maxsize=4096)
def _each_process_covers(sharding: jax.sharding.Sharding, shape: tuple[int, ...]) -> bool:
    """Whether every process's devices hold all of an array of `shape` under `sharding`.

    Shards of one sharding form a regular grid (two slices are equal or disjoint), so a
    process's distinct slices cover the array exactly when their sizes add up to its size.
    Computed from the whole device map, so every process gets the same answer (callers take
    collective and non-collective paths on it).
    """
    slices: dict[int, dict[tuple, int]] = {}
    for dev, index in sharding.devices_indices_map(shape).items():
        slices.setdefault(dev.process_index, {})[_shard_key(index)] = _extent(index, shape)
    total = int(np.prod(shape, dtype=np.int64))
    return all(sum(sizes.values()) == total for sizes in slices.values())


def covers_locally(x: Any) -> bool:
    """Whether each process's shards of `x` hold all of it (always true in one process).

    A multi-process array does when its sharding replicates it across processes (see
    `sharding.host_local_shardings`); then each process writes it shard by shard without any
    exchange. The answer is the same in every process.
    """
    if not isinstance(x, jax.Array):
        return False
    return x.is_fully_addressable or _each_process_covers(x.sharding, tuple(x.shape))


def _write_shards(x: jax.Array, views: list[np.ndarray], stacked: bool,
                  out_dtype: np.dtype) -> None:
    """Copy each distinct addressable shard of `x` (cast on the devices) into its slice of
    `views`: the one view, or for a stacked array layer i's slice into views[i]."""
    if x.is_fully_addressable and np.dtype(x.dtype) != out_dtype:
        x = _cast_fn(out_dtype.name, x.sharding)(x)
    for shard in _unique_shards(x):
        data = shard.data
        if np.dtype(data.dtype) != out_dtype:  # spans processes: cast each shard where it is
            data = _cast_fn(out_dtype.name, None)(data)
        host = np.asarray(data)
        if not stacked:
            views[0][shard.index] = host
            continue
        for j, i in enumerate(range(len(views))[shard.index[0]]):
            views[i][shard.index[1:]] = host[j]


def write_hf_arrays(target: nnx.Module | nnx.State, writer: ArrayWriter,
                    dtype: Any = np.float32, *, cfg: QwenConfig | None = None) -> int:
    """Write every parameter, HF-named and in HF layout, into views handed out by `writer`;
    returns the bytes written.

    Each addressable shard goes from its device buffer straight to its slice of the view (a
    replicated slice once), so a parameter sharded over the mesh is never assembled in host
    memory first: one copy per byte on CPU, one device-to-host transfer plus one copy
    elsewhere. A cast to `dtype` runs on the devices, shard by shard. This holds for any
    array whose shards in this process cover it (`covers_locally`): all of them in one
    process, and in several once `weight_export` has re-sharded the parameters to
    `sharding.host_local_shardings`. Any other parameter that spans processes is gathered
    first (`process_allgather`, as in :func:`iter_hf_arrays`), a slower fallback.
    """
    cfg = _config_of(target, cfg)
    flat = dict(nnx.to_flat_state(_state_of(target)))
    out_dtype = np.dtype(dtype)
    table = param_table(cfg)
    # HF layout is a reshape of ours: each Flax-layout view is still a view of the writer's.
    views = {spec.hf_name: writer.view(spec.hf_name, spec.hf_shape, out_dtype)
             .reshape(spec.flax_shape) for spec in table}
    for path, specs in rows_by_array(table).items():
        if path not in flat:
            raise ValueError(f"model state has no parameter {'/'.join(map(str, path))} "
                             f"(needed for {specs[0].hf_name})")
        x = _leaf_value(flat[path])
        dsts = [views[spec.hf_name] for spec in specs]
        stacked = specs[0].layer is not None
        if covers_locally(x):
            _write_shards(x, dsts, stacked, out_dtype)
        else:
            host = np.asarray(_to_numpy(x), dtype=out_dtype)
            for j, dst in enumerate(dsts):
                dst[...] = host[j] if stacked else host
    return sum(v.nbytes for v in views.values())


def export_hf_arrays(model: nnx.Module | nnx.State, dtype: Any = np.float32, *,
                     cfg: QwenConfig | None = None) -> dict[str, np.ndarray]:
    """All parameters as {HF name: HF-layout numpy array} (feeds safetensors and the weight channel)."""
    return dict(iter_hf_arrays(model, dtype, cfg=cfg))


def hf_specs(cfg: QwenConfig, dtype: Any) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """(HF name, HF shape, dtype) of every exported tensor, known before any array is gathered."""
    return [(s.hf_name, s.hf_shape, np.dtype(dtype)) for s in param_table(cfg)]


def plan_shards(specs: Sequence[tuple[str, tuple[int, ...], np.dtype]],
                max_shard_bytes: int) -> list[list[int]]:
    """Group tensors (in order) into files of at most max_shard_bytes (a bigger tensor alone)."""
    groups: list[list[int]] = [[]]
    size = 0
    for i, (_, shape, dt) in enumerate(specs):
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += nbytes
    return groups


_DTYPE_NAMES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def parse_dtype(name: str) -> np.dtype:
    if name not in _DTYPE_NAMES:
        raise ValueError(f"dtype {name!r} not one of {sorted(_DTYPE_NAMES)}")
    return np.dtype(_DTYPE_NAMES[name])


def parse_size(text: str | int) -> int:
    """'5GB' / '500MB' / '2GiB' / 1000 -> bytes."""
    if isinstance(text, int):
        return text
    t = text.strip().upper()
    units = [("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6),
             ("KB", 10**3), ("B", 1)]
    for suffix, mult in units:
        if t.endswith(suffix):
            try:
                return int(float(t[: -len(suffix)]) * mult)
            except ValueError:
                break
    try:
        return int(t)
    except ValueError:
        raise ValueError(f"size {text!r} is not like '5GB' or '500MB'") from None


def _dtype_str(dt: np.dtype) -> str:
    return {np.dtype(np.float32): "float32", np.dtype(ml_dtypes.bfloat16): "bfloat16",
            np.dtype(np.float16): "float16"}[np.dtype(dt)]


def _take_in_order(arrays: Iterator[tuple[str, np.ndarray]], names: list[str]) -> Iterator[np.ndarray]:
    """The next len(names) arrays of `arrays`, checking they come with exactly these names."""
    for want in names:
        name, arr = next(arrays)
        if name != want:
            raise RuntimeError(f"export order mismatch: got {name!r}, expected {want!r}")
        yield arr


def save_hf_dir(target: nnx.Module | nnx.State, out_dir: str | pathlib.Path, *,
                cfg: QwenConfig | None = None, dtype: Any = np.float32,
                max_shard_size: int | str = "5GB",
                base_hf_dir: str | pathlib.Path | None = None) -> pathlib.Path:
    """Write a complete HF directory: config.json, safetensors sharded by size (+ index json) and,
    from `base_hf_dir`, the tokenizer/generation files. Streams one tensor at a time."""
    cfg = _config_of(target, cfg)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dt = np.dtype(dtype)
    specs = hf_specs(cfg, dt)
    groups = plan_shards(specs, parse_size(max_shard_size))
    arrays = iter_hf_arrays(target, dt, cfg=cfg)
    weight_map: dict[str, str] = {}
    total = 0
    for gi, group in enumerate(groups):
        fname = ("model.safetensors" if len(groups) == 1
                 else f"model-{gi + 1:05d}-of-{len(groups):05d}.safetensors")
        gspecs = [specs[i] for i in group]
        total += write_safetensors(out / fname, gspecs,
                                   _take_in_order(arrays, [s[0] for s in gspecs]), {"format": "pt"})
        weight_map.update({name: fname for name, _, _ in gspecs})
    if len(groups) > 1:
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    else:
        stale = out / "model.safetensors.index.json"
        if stale.exists():
            stale.unlink()
    # config.json: the base one when given (keeps token ids, chat fields), with our dtype.
    config = cfg.to_hf_dict()
    if base_hf_dir is not None:
        base = pathlib.Path(base_hf_dir)
        base_cfg = base / "config.json"
        if not base_cfg.is_file():
            raise FileNotFoundError(f"{base_cfg}: base config.json not found")
        base_dict = json.loads(base_cfg.read_text())
        base_parsed = QwenConfig.from_hf_dict(base_dict, source=str(base_cfg))
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "intermediate_size", "family"):
            if getattr(base_parsed, field) != getattr(cfg, field):
                raise ValueError(f"{base_cfg}: {field}={getattr(base_parsed, field)} but the "
                                 f"checkpoint has {getattr(cfg, field)}")
        config = base_dict
        for name in TOKENIZER_FILES:
            if (base / name).is_file():
                shutil.copyfile(base / name, out / name)
    config.pop("dtype", None)
    config["torch_dtype"] = _dtype_str(dt)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out
