"""Package boundaries, checked on what Python really loads, and no import cycle anywhere.

`cure_jax` (the JAX learner) must never load torch, vllm, transformers or jinja2, nor any of
`rollout` but its numpy-only contract (`rollout.contract`), nor `sandbox`; `rollout.contract`
loads none of those and no jax either; `rollout` never loads jax, flax or `cure_jax`; `sandbox`
loads none of the ML libraries and none of our other packages. For each package a fresh
interpreter imports every one of its modules (found by walking its files) and records, for every
module that got loaded, which module's code imported it; a violation is reported as the import
that crossed the boundary, with the chain of imports that led to it.

The cycle check reads the syntax tree of every Python file of the project: an import counts
wherever it is, function-local ones included (they run too), except under `if TYPE_CHECKING:`.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import subprocess
import sys

import pytest

from tools import gen_build
from tools.pysource import (
    find_cycles,
    import_graph,
    load_project,
    module_name,
    packages,
)

ML = ("torch", "vllm", "transformers", "jinja2")
JAX = ("jax", "jaxlib", "flax", "optax", "orbax")


@dataclasses.dataclass(frozen=True)
class Rule:
    """Modules (and their submodules) a package may not load, less the `allowed` exceptions
    (exact names, or subtrees when written `name.*`)."""
    forbidden: tuple[str, ...]
    allowed: tuple[str, ...] = ()

    def forbids(self, module: str) -> bool:
        for a in self.allowed:
            tree = a.endswith(".*")
            a = a.removesuffix(".*")
            if module == a or (tree and module.startswith(a + ".")):
                return False
        return any(module == f or module.startswith(f + ".") for f in self.forbidden)


RULES = {
    "cure_jax": Rule(ML + ("rollout", "sandbox"), allowed=("rollout", "rollout.contract.*")),
    "rollout.contract": Rule(ML + JAX + ("rollout", "cure_jax", "sandbox"),
                             allowed=("rollout", "rollout.contract.*")),
    "rollout": Rule(JAX + ("cure_jax",)),
    "sandbox": Rule(ML + JAX + ("rollout", "cure_jax")),
    # Benchmarks measure both sides against their baselines (JAX beside torch, vLLM, ...):
    # nothing is forbidden to them.
    "benchmarks": Rule(()),
}

ENV = {"JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "VLLM_TARGET_DEVICE": "cpu", "TOKENIZERS_PARALLELISM": "false"}

# Runs in the fresh interpreter: imports the modules named in argv[1] (JSON) one by one and writes
# {"loaded": {module: the module whose code imported it}, "failed": {module: error}} to argv[2].
PROBE = r"""
import importlib, json, sys, traceback

importer = {}


class WhoImports:
    def find_spec(self, name, path=None, target=None):
        f = sys._getframe(1)
        while f is not None and (f.f_code.co_filename.startswith("<frozen")
                                 or f.f_globals.get("__name__", "").partition(".")[0] == "importlib"):
            f = f.f_back
        importer[name] = f.f_globals.get("__name__") if f is not None else None
        return None


sys.meta_path.insert(0, WhoImports())
before = set(sys.modules)
failed = {}
for mod in json.loads(sys.argv[1]):
    try:
        importlib.import_module(mod)
    except BaseException as e:
        failed[mod] = traceback.format_exception_only(type(e), e)[-1].strip()
loaded = {n: importer.get(n) for n in list(sys.modules) if n not in before}
with open(sys.argv[2], "w") as f:
    json.dump({"loaded": loaded, "failed": failed}, f)
"""


def package_modules(root: pathlib.Path, package: str) -> list[str]:
    """Every module of a package, from its files (`__main__.py` left out: it runs on import)."""
    base = package.replace(".", "/") + "/"
    project = load_project(root)
    return sorted(module_name(rel) for rel in project.sources
                  if rel.startswith(base) and not rel.endswith("/__main__.py"))


def start_probe(root: pathlib.Path, modules: list[str], out: pathlib.Path) -> subprocess.Popen:
    env = {**os.environ, **ENV, "PYTHONPATH": str(root)}
    return subprocess.Popen([sys.executable, "-c", PROBE, json.dumps(modules), str(out)], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish_probe(proc: subprocess.Popen, out: pathlib.Path, timeout: float = 300) -> dict:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0 and out.is_file(), f"import probe failed ({proc.returncode}): {err[-2000:]}"
    return json.loads(out.read_text())


def violations(result: dict, rule: Rule, ours: tuple[str, ...] = ("cure_jax", "rollout", "sandbox")) -> list[str]:
    """One line per import that crossed the boundary: who imported what, the chain that led there,
    and the forbidden modules it brought in."""
    loaded: dict[str, str | None] = result["loaded"]

    def chain(m: str) -> list[str]:
        out = [m]
        while loaded.get(out[-1]) not in (None, "__main__") and loaded[out[-1]] not in out:
            out.append(loaded[out[-1]])
        return out[::-1]

    forbidden = {m for m in loaded if rule.forbids(m)}
    crossings = sorted(m for m in forbidden if loaded[m] is None or not rule.forbids(loaded[m]))
    brought: dict[str, set[str]] = {c: set() for c in crossings}
    for m in forbidden:
        first = next((c for c in reversed(chain(m)) if c in brought), None)
        if first is not None and m != first:
            brought[first].add(m if m.split(".")[0] in ours else m.split(".")[0])
    lines = []
    for c in crossings:
        more = sorted(brought[c] - {c.split(".")[0]})
        extra = f", which loads {', '.join(more[:12])}{' ...' if len(more) > 12 else ''}" if more else ""
        lines.append(f"{loaded[c]} imports {c} ({' -> '.join(chain(c))}){extra}")
    return lines


class Probes(dict):
    """package -> probe result (short repr: pytest prints it when a test fails)."""

    def __repr__(self) -> str:
        return f"<import probes of {sorted(self)}>"


@pytest.fixture(scope="module")
def probes(repo_root, tmp_path_factory) -> Probes:
    """All packages' probes, run side by side (each in its own fresh interpreter)."""
    out = tmp_path_factory.mktemp("probes")
    procs, results = {}, Probes()
    try:
        for package in RULES:
            if (repo_root / package.replace(".", "/") / "__init__.py").is_file():
                procs[package] = start_probe(repo_root, package_modules(repo_root, package), out / f"{package}.json")
        for package, proc in procs.items():
            try:
                results[package] = finish_probe(proc, out / f"{package}.json")
            except (AssertionError, subprocess.TimeoutExpired) as e:
                results[package] = {"error": str(e)}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def static_violations(root: pathlib.Path, package: str, rule: Rule) -> list[str]:
    """Every import statement in the package's files (function-local ones too, which the probe
    does not run) that names a forbidden module."""
    project = load_project(root)
    base = package.replace(".", "/") + "/"
    found = []
    for rel, src in sorted(project.sources.items()):
        if not rel.startswith(base):
            continue
        for imp in src.imports:
            target = project.resolve(imp, rel)
            name = module_name(target) if target is not None else imp.candidates[-1]
            line = f"{rel}:{imp.lineno} imports {name}"
            if rule.forbids(name) and line not in found:
                found.append(line)
    return found


def test_every_package_has_a_rule(repo_root):
    project = load_project(repo_root)
    subs = [d.replace("/", ".") for d in gen_build.SUBLIBRARIES if (repo_root / d / "__init__.py").is_file()]
    missing = sorted((set(packages(project)) | set(subs)) - set(RULES))
    assert not missing, f"no boundary rule for package(s) {missing}: add them to RULES in {__file__}"


def _exists(root: pathlib.Path, package: str) -> None:
    if not (root / package.replace(".", "/") / "__init__.py").is_file():
        pytest.skip(f"{package} does not exist")


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_nothing_forbidden(package, repo_root):
    _exists(repo_root, package)
    found = static_violations(repo_root, package, RULES[package])
    assert not found, f"{package} imports forbidden modules:\n  " + "\n  ".join(found)


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_loads_nothing_forbidden(package, repo_root, probes):
    _exists(repo_root, package)
    result = probes[package]
    assert "error" not in result, f"{package}: {result.get('error')}"
    found = violations(result, RULES[package])
    found += [f"{m} fails to import (what it would load is unknown): {e}" for m, e in sorted(result["failed"].items())]
    assert not found, f"{package} loads forbidden modules:\n  " + "\n  ".join(found)


def _cycle_lines(root: pathlib.Path) -> list[str]:
    project = load_project(root)
    graph = import_graph(project)
    lines = []
    for cycle in find_cycles(graph):
        steps = [cycle[0]]
        for a, b in itertools.pairwise(cycle):
            steps.append(f"{b} ({project.modules[a]}:{graph[a][b]})")
        lines.append(" -> ".join(steps))
    return lines


def test_no_import_cycle(repo_root):
    cycles = _cycle_lines(repo_root)
    assert not cycles, "import cycles (each import: module (file:line of the import)):\n  " + "\n  ".join(cycles)


# ----------------------------------------------------------------------------- the checks themselves

def test_cycle_through_function_local_import_is_found(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("from typing import TYPE_CHECKING\nfrom . import a\n"
                                           "if TYPE_CHECKING:\n    from pkg import c\n")
    (tmp_path / "pkg" / "c.py").write_text("import pkg.b\n")
    assert _cycle_lines(tmp_path) == ["pkg.a -> pkg.b (pkg/a.py:2) -> pkg.a (pkg/b.py:2)"]


def test_violation_names_the_importing_module(tmp_path):
    for rel, text in {"pkg/__init__.py": "", "pkg/a_outer.py": "from pkg import z_middle\n",
                      "pkg/clean.py": "import json\n", "pkg/z_middle.py": "def f():\n    pass\nimport heavy\n",
                      "pkg/__main__.py": "raise SystemExit('run on import')\n",
                      "heavy/__init__.py": "from heavy import core\n", "heavy/core.py": ""}.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text(text)
    modules = package_modules(tmp_path, "pkg")
    assert modules == ["pkg", "pkg.a_outer", "pkg.clean", "pkg.z_middle"]
    result = finish_probe(start_probe(tmp_path, modules, tmp_path / "out.json"), tmp_path / "out.json")
    assert result["failed"] == {}
    assert violations(result, Rule(("heavy",)), ours=("pkg", "heavy")) == [
        "pkg.z_middle imports heavy (pkg.a_outer -> pkg.z_middle -> heavy), which loads heavy.core"]
    assert violations(result, Rule(("heavy",), allowed=("heavy",)), ours=("pkg", "heavy")) == [
        "heavy imports heavy.core (pkg.a_outer -> pkg.z_middle -> heavy -> heavy.core)"]


def test_rule_exceptions():
    rule = RULES["cure_jax"]
    assert not rule.forbids("rollout") and not rule.forbids("rollout.contract.schema")
    assert rule.forbids("rollout.experience_maker") and rule.forbids("torch.nn") and not rule.forbids("torchx")
