"""Typed config sections and the one builder that makes them from a mapping.

A config section is a frozen dataclass deriving from :class:`Section`. Its type hints say what
each field holds (``int``, ``float``, ``bool``, ``str``, ``X | None``, ``tuple[...]``, a
nested section, or a free-form ``Mapping``) and its ``validate(path)`` checks the values.
:func:`build` turns a mapping (an ``ml_collections.ConfigDict``, a dict, parsed JSON) into the
section: an unknown field, a value of the wrong type or a bad value is a :class:`ConfigError`
whose message is one line naming the dotted field, e.g.
``config.learner.lr: must be > 0 (got -1.0)``. Sections constructed directly in Python are
coerced and validated the same way (their errors start with the class's ``_path``).

Both sides use it: cure-train validates its whole config at the door, and the rollout server
rebuilds the same sections from the JSON spec it is started with. Standard library only.
"""
from __future__ import annotations

import contextvars
import dataclasses
import functools
import numbers
import os
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NoReturn

__all__ = ["ConfigError", "Section", "build", "check", "defaults", "fail", "one_of", "to_dict"]


class ConfigError(ValueError):
    """A bad config field or value; the message is one line naming the dotted field."""


def fail(path: str, msg: str) -> NoReturn:
    """Raise ``ConfigError("<path>: <msg>")``."""
    raise ConfigError(f"{path}: {msg}")


def check(cond: bool, path: str, msg: str) -> None:
    """Raise ``ConfigError("<path>: <msg>")`` unless ``cond``."""
    if not cond:
        fail(path, msg)


def one_of(value: Any, choices: tuple, path: str) -> None:
    """``value`` must be one of ``choices``."""
    check(value in choices, path, f"must be one of {choices} (got {value!r})")


# The path of the section being built by `build`; None while a section is constructed directly.
_BUILD_PATH: contextvars.ContextVar[str | None] = contextvars.ContextVar("config_path",
                                                                        default=None)


class Section:
    """Base of config sections (frozen dataclasses): construction coerces every field to its
    type hint and then calls :meth:`validate`, so an existing section is a valid one."""

    _path: ClassVar[str] = ""  # error prefix of a directly constructed section (else class name)

    def __post_init__(self) -> None:
        path = _BUILD_PATH.get() or self._path or type(self).__name__
        for name, hint in _hints(type(self)).items():
            value = getattr(self, name)
            new = coerce(value, hint, f"{path}.{name}")
            if new is not value:
                object.__setattr__(self, name, new)
        self.validate(path)

    def validate(self, path: str) -> None:
        """Check the values (types are already right); raise ConfigError naming the field."""

    @classmethod
    def from_mapping(cls, section: Any, path: str | None = None) -> Any:
        """:func:`build` of this class; errors are prefixed with ``path`` (default ``_path``)."""
        return build(cls, section, path or cls._path or cls.__name__)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Field name -> resolved type hint of dataclass ``cls`` (ClassVars excluded)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _as_dict(section: Any, path: str) -> dict[str, Any]:
    if section is None:
        return {}
    if hasattr(section, "to_dict"):  # ml_collections.ConfigDict
        return dict(section.to_dict())
    if isinstance(section, Mapping):
        return dict(section)
    fail(path, f"must be a section (mapping), got {type(section).__name__}")


def _section_type(hint: Any) -> type | None:
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def coerce(value: Any, hint: Any, path: str) -> Any:
    """``value`` as type ``hint`` (ints to floats, lists to tuples, ...) or a ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return coerce(value, rest[0], path)
        for a in rest:
            try:
                return coerce(value, a, path)
            except ConfigError:
                continue
        fail(path, f"must be one of the types {rest} (got {value!r})")
    if origin is typing.Literal:
        one_of(value, args, path)
        return value
    if hint is bool:
        check(isinstance(value, bool), path, f"must be true or false (got {value!r})")
        return value
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        fail(path, f"must be an integer (got {value!r})")
    if hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        fail(path, f"must be a number (got {value!r})")
    if hint is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        check(isinstance(value, str), path, f"must be a string (got {value!r})")
        return value
    if origin is tuple or hint is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            fail(path, f"must be a list (got {value!r})")
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        check(len(value) == len(args), path, f"must have {len(args)} items (got {value!r})")
        return tuple(coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (Mapping, dict) or hint in (Mapping, dict):
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        check(isinstance(value, Mapping), path, f"must be a mapping (got {value!r})")
        return dict(value)
    sub = _section_type(hint)
    if sub is not None:
        return value if isinstance(value, sub) else build(sub, value, path)
    raise TypeError(f"{path}: unsupported type hint {hint!r}")


def build(cls: type, section: Any, path: str = "config") -> Any:
    """Section ``cls`` from ``section`` (a mapping, a ConfigDict, None for all defaults, or a
    ``cls`` already): unknown fields, bad types and bad values are ConfigErrors naming
    ``<path>.<field>``. Nested sections are built with their own dotted paths."""
    if isinstance(section, cls):
        return section
    d = _as_dict(section, path)
    hints = _hints(cls)
    for key in d:
        if key not in hints:
            fail(f"{path}.{key}", f"unknown field (known: {', '.join(sorted(hints))})")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name, hint, where = f.name, hints[f.name], f"{path}.{f.name}"
        if _section_type(hint) is not None:  # built here, so errors name their own path
            kwargs[name] = build(hint, d.get(name), where)
        elif name in d:
            kwargs[name] = d[name] if issubclass(cls, Section) else coerce(d[name], hint, where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            fail(where, "missing required field")
    token = _BUILD_PATH.set(path)
    try:
        obj = cls(**kwargs)
    finally:
        _BUILD_PATH.reset(token)
    if not isinstance(obj, Section) and hasattr(obj, "validate"):
        obj.validate(path)
    return obj


def to_dict(obj: Any) -> Any:
    """A section as plain JSON-able data: sections -> dicts, tuples -> lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def defaults(cls: type, none: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """The default value of every field of section ``cls`` as nested dicts (tuples kept), without
    constructing it (a section may have no valid all-defaults instance). A ``None`` default of
    an ``X | None`` field becomes ``none(X)`` when ``none`` is given (e.g. an ml_collections
    placeholder, so that the field can be set from the command line)."""
    hints = _hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        sub = _section_type(hint)
        if sub is not None:
            out[f.name] = defaults(sub, none)
            continue
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: a section field needs a default")
        if value is None and none is not None:
            inner = [a for a in typing.get_args(hint) if a is not type(None)]
            kind = inner[0] if len(inner) == 1 else object
            value = none(typing.get_origin(kind) or kind)  # tuple[int, ...] -> tuple
        out[f.name] = value
    return out
