"""The one config builder: typed sections from mappings, one-line errors naming the field."""
from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from rollout.contract.config import (
    ConfigError,
    Section,
    build,
    check,
    defaults,
    to_dict,
)


@dataclasses.dataclass(frozen=True)
class Inner(Section):
    _path: ClassVar[str] = "inner"

    n: int = 1
    ratio: float = 0.5

    def validate(self, p: str) -> None:
        check(self.n >= 1, f"{p}.n", f"must be >= 1 (got {self.n})")


@dataclasses.dataclass(frozen=True)
class Outer(Section):
    name: str = "x"
    flag: bool = False
    limit: int | None = None
    pairs: tuple[tuple[int, int], ...] = ((1, 2),)
    words: tuple[str, ...] = ()
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    inner: Inner = dataclasses.field(default_factory=Inner)

    def validate(self, p: str) -> None:
        check(self.inner.n <= 10 or self.flag, f"{p}.inner.n", "> 10 needs flag")


@dataclasses.dataclass(frozen=True)
class Plain:
    """A dataclass that is not a Section: the builder coerces and calls validate itself."""
    k: int = 2

    def validate(self, p: str) -> None:
        check(self.k > 0, f"{p}.k", "must be > 0")


def test_build_coerces_to_the_type_hints():
    o = build(Outer, {"name": pathlib.Path("/a"), "limit": 3.0, "pairs": [[3, 4], (5, 6)],
                      "words": ["a"], "extra": {"x": [1]}, "inner": {"n": 2, "ratio": 1}})
    assert o == Outer(name="/a", limit=3, pairs=((3, 4), (5, 6)), words=("a",),
                      extra={"x": [1]}, inner=Inner(n=2, ratio=1.0))
    assert isinstance(o.inner.ratio, float) and isinstance(o.limit, int)
    assert build(Outer, None) == Outer()  # no section: every default
    assert build(Outer, o) is o


def test_build_from_a_config_dict():
    import ml_collections
    c = ml_collections.ConfigDict({"name": "y", "inner": {"n": 3}, "extra": {"a": {"b": 1}}})
    o = build(Outer, c, "config.outer")
    assert (o.name, o.inner.n, o.extra) == ("y", 3, {"a": {"b": 1}})


@pytest.mark.parametrize("section,message", [
    ({"nme": "x"}, "config.o.nme: unknown field (known: extra, flag, inner, limit, name, pairs, words)"),
    ({"inner": {"m": 1}}, "config.o.inner.m: unknown field (known: n, ratio)"),
    ({"name": 3}, "config.o.name: must be a string (got 3)"),
    ({"flag": "yes"}, "config.o.flag: must be true or false (got 'yes')"),
    ({"flag": 1}, "config.o.flag: must be true or false (got 1)"),
    ({"limit": 2.5}, "config.o.limit: must be an integer (got 2.5)"),
    ({"limit": True}, "config.o.limit: must be an integer (got True)"),
    ({"inner": {"ratio": "half"}}, "config.o.inner.ratio: must be a number (got 'half')"),
    ({"pairs": "1x2"}, "config.o.pairs: must be a list (got '1x2')"),
    ({"pairs": [[1, 2, 3]]}, "config.o.pairs[0]: must have 2 items (got [1, 2, 3])"),
    ({"pairs": [[1, "a"]]}, "config.o.pairs[0][1]: must be an integer (got 'a')"),
    ({"extra": 3}, "config.o.extra: must be a mapping (got 3)"),
    ({"inner": 3}, "config.o.inner: must be a section (mapping), got int"),
    ({"inner": {"n": 0}}, "config.o.inner.n: must be >= 1 (got 0)"),  # the section's validate
    ({"inner": {"n": 11}}, "config.o.inner.n: > 10 needs flag"),  # the parent's validate
])
def test_errors_are_one_line_naming_the_dotted_field(section, message):
    with pytest.raises(ConfigError) as ei:
        build(Outer, section, "config.o")
    assert str(ei.value) == message
    assert isinstance(ei.value, ValueError)


def test_direct_construction_is_coerced_and_validated_too():
    assert Outer(pairs=[[1, 2]], limit=4.0).pairs == ((1, 2),)
    with pytest.raises(ConfigError, match=r"^inner\.n: must be >= 1 \(got 0\)$"):
        Inner(n=0)  # prefix: the class's _path
    with pytest.raises(ConfigError, match=r"^Outer\.flag: must be true or false"):
        Outer(flag="no")  # no _path: the class name
    with pytest.raises(ConfigError, match=r"^Outer\.inner\.n: must be >= 1"):
        Outer(inner={"n": 0})  # a mapping for a nested section is built
    with pytest.raises(ConfigError, match=r"^inner\.m: unknown field"):
        Inner.from_mapping({"m": 1})
    with pytest.raises(ConfigError, match=r"^spec\.inner\.n: must be >= 1"):
        Inner.from_mapping({"n": 0}, "spec.inner")


def test_plain_dataclasses_are_built_too():
    assert build(Plain, {"k": 3.0}) == Plain(k=3)
    with pytest.raises(ConfigError, match=r"^config\.k: must be > 0$"):
        build(Plain, {"k": -1})
    with pytest.raises(ConfigError, match=r"^config\.k: must be an integer"):
        build(Plain, {"k": "3"})


def test_to_dict_is_json_and_builds_the_same_section():
    o = Outer(pairs=((1, 2), (3, 4)), words=("a",), extra={"x": (1, 2)}, inner=Inner(n=4))
    d = to_dict(o)
    assert d == {"name": "x", "flag": False, "limit": None, "pairs": [[1, 2], [3, 4]],
                 "words": ["a"], "extra": {"x": [1, 2]}, "inner": {"n": 4, "ratio": 0.5}}
    assert build(Outer, json.loads(json.dumps(d))) == dataclasses.replace(o, extra={"x": [1, 2]})


def test_defaults_without_an_instance():
    d = defaults(Outer)
    assert d == {"name": "x", "flag": False, "limit": None, "pairs": ((1, 2),), "words": (),
                 "extra": {}, "inner": {"n": 1, "ratio": 0.5}}
    assert defaults(Outer, none=lambda t: f"<{t.__name__}>")["limit"] == "<int>"
