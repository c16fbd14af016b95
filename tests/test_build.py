"""Keeps the Bazel BUILD file in step with the tree, and its dependency graph honest.

BUILD is Starlark, a Python subset, so it is parsed with `ast` and its rule calls are read as
records. Every package module must belong to a py_library, every test file to a py_test, every
console script in pyproject.toml to a py_binary, and every file BUILD names must exist. BUILD is
what tools/gen_build.py writes from the tree; its targets form no cycle, and the package
boundaries hold in it too: `:cure_jax` reaches `rollout` only through `:rollout_contract`, and
`:rollout_contract` and `:sandbox` depend on nothing of ours. Every py_test runs its file through
the one pytest runner, so a failing test fails its target.
"""
from __future__ import annotations

import ast
import itertools
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from tools import gen_build
from tools.pysource import find_cycles, load_project, packages, project_files

RULES = ("py_library", "py_binary", "py_test", "filegroup")
RUNNER = gen_build.RUNNER
# Our targets a library may depend on (a library absent here may depend on any of ours).
ALLOWED_DEPS = {"cure_jax": {"rollout_contract"}, "rollout_contract": set(), "sandbox": set()}


def _literal(node: ast.AST, root: pathlib.Path):
    """Evaluates the Starlark subset BUILD uses: literals, lists, `+`, glob() and requirement()."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "glob":
        patterns = _literal(node.args[0], root)
        kws = {kw.arg: _literal(kw.value, root) for kw in node.keywords}
        excluded = {str(p.relative_to(root)) for pat in kws.get("exclude", []) for p in root.glob(pat)}
        return sorted({str(p.relative_to(root)) for pat in patterns for p in root.glob(pat)
                       if p.is_file()} - excluded)
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "requirement":
        return "requirement:" + _literal(node.args[0], root)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _literal(node.left, root) + _literal(node.right, root)
    if isinstance(node, ast.List):
        return [_literal(e, root) for e in node.elts]
    return ast.literal_eval(node)


def parse_build(root: pathlib.Path) -> list[dict]:
    """Returns one dict per rule call in BUILD: {"rule": ..., "name": ..., "srcs": [...], ...}."""
    tree = ast.parse((root / "BUILD").read_text(), filename="BUILD")
    targets = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            call = stmt.value
            rule = getattr(call.func, "id", None)
            if rule in RULES:
                record = {"rule": rule, "line": stmt.lineno}
                record.update({kw.arg: _literal(kw.value, root) for kw in call.keywords
                               if kw.arg in ("name", "srcs", "data", "main", "args", "deps", "size", "tags")})
                targets.append(record)
    return targets


def labels(target: dict, key: str) -> list[str]:
    """The names of our targets in a target's deps or data (`:x` -> `x`)."""
    return [d[1:] for d in target.get(key, []) if d.startswith(":")]


def build_problems(root: pathlib.Path) -> list[str]:
    """Every way BUILD and the tree disagree, one line each (empty when they agree)."""
    targets = parse_build(root)
    problems = []
    names = [t["name"] for t in targets]
    problems += [f"BUILD: target name {n!r} is used twice" for n in set(names) if names.count(n) > 1]

    named_files: dict[str, list[str]] = {}
    for t in targets:
        for key in ("srcs", "data"):
            for f in t.get(key, []):
                if not f.startswith((":", "requirement:")):
                    named_files.setdefault(f, []).append(t["name"])
        if "main" in t:
            named_files.setdefault(t["main"], []).append(t["name"])
    for f, owners in sorted(named_files.items()):
        if not (root / f).is_file():
            problems.append(f"BUILD: {f} is named by {owners[0]!r} but does not exist")

    library_srcs = {f for t in targets if t["rule"] == "py_library" for f in t.get("srcs", [])}
    for pkg in packages(load_project(root)):
        for path in sorted((root / pkg).rglob("*.py")):
            rel = str(path.relative_to(root))
            if rel not in library_srcs:
                problems.append(f"BUILD: module {rel} belongs to no py_library")

    test_srcs = {f for t in targets if t["rule"] == "py_test" for f in t.get("srcs", [])}
    for path in sorted((root / "tests").rglob("test_*.py")):
        rel = str(path.relative_to(root))
        if rel not in test_srcs:
            problems.append(f"BUILD: test file {rel} has no py_test")

    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"].get("scripts", {})
    binaries = {t["name"]: t for t in targets if t["rule"] == "py_binary"}
    for script, entry in sorted(scripts.items()):
        module = entry.split(":")[0].replace(".", "/") + ".py"
        binary = binaries.get(script)
        if binary is None:
            problems.append(f"BUILD: console script {script} has no py_binary")
        elif binary.get("main") != module:
            problems.append(f"BUILD: py_binary {script} has main={binary.get('main')!r}, expected {module!r}")
    return problems


def graph_problems(targets: list[dict], root: pathlib.Path | None = None) -> list[str]:
    """Self-dependencies, cycles (deps and data: Bazel refuses both) and boundary breaches (with
    the imports behind them when `root` is given)."""
    problems = []
    by_name = {t["name"]: t for t in targets}
    for t in targets:
        if t["name"] in labels(t, "deps") + labels(t, "data"):
            problems.append(f"BUILD: {t['name']} lists itself in its deps")
        for dep in labels(t, "deps") + labels(t, "data"):
            if dep not in by_name:
                problems.append(f"BUILD: {t['name']} names :{dep}, which is no target")
    graph = {t["name"]: {d: 0 for d in labels(t, "deps") + labels(t, "data") if d != t["name"]} for t in targets}
    problems += [f"BUILD: dependency cycle {' -> '.join(c)}" for c in find_cycles(graph)]
    ours = {t["name"] for t in targets if t["rule"] == "py_library"}
    for name, allowed in sorted(ALLOWED_DEPS.items()):
        if name in by_name:
            bad = sorted((set(labels(by_name[name], "deps")) & ours) - allowed - {name})
            if bad:
                sites = import_sites(root, name, set(bad)) if root is not None else []
                why = f" ({'; '.join(sites) or 'imported nowhere: regenerate BUILD'})" if root is not None else ""
                problems.append(f"BUILD: :{name} depends on {', '.join(':' + b for b in bad)}; "
                                f"it may use {sorted(allowed) or 'none of our targets'}{why}")
    return problems


def import_sites(root: pathlib.Path, target: str, deps: set[str]) -> list[str]:
    """`file:line imports module` for each import in `target`'s files of a module of `deps`."""
    project = load_project(root)
    pkgs = packages(project)
    sites = []
    for rel in sorted(project.sources):
        if gen_build.owner(rel, pkgs) == target:
            for dep_file, imp in project.imported_files(rel):
                if gen_build.owner(dep_file, pkgs) in deps:
                    sites.append(f"{rel}:{imp.lineno} imports {dep_file[:-3].replace('/', '.')}")
    return sites


def test_build_matches_tree(repo_root):
    problems = build_problems(repo_root)
    assert not problems, "\n".join(problems)


def test_build_is_generated(repo_root):
    r = subprocess.run([sys.executable, "tools/gen_build.py", "--check"], cwd=repo_root,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr


def test_build_graph(repo_root):
    problems = graph_problems(parse_build(repo_root), repo_root)
    assert not problems, "\n".join(problems)


def test_graph_problems_are_reported():
    targets = [
        {"rule": "py_library", "name": "sandbox", "deps": [":sandbox", "requirement:numpy"]},
        {"rule": "py_library", "name": "rollout_contract", "deps": [":sandbox"]},
        {"rule": "py_library", "name": "rollout", "deps": [":rollout_contract"], "data": [":cure-x"]},
        {"rule": "py_library", "name": "cure_jax", "deps": [":rollout_contract", ":rollout"]},
        {"rule": "py_binary", "name": "cure-x", "deps": [":cure_jax", ":nothing"]},
        {"rule": "py_library", "name": "a", "deps": [":b"]},
        {"rule": "py_library", "name": "b", "deps": [":a"]},
    ]
    assert graph_problems(targets) == [
        "BUILD: sandbox lists itself in its deps",
        "BUILD: cure-x names :nothing, which is no target",
        "BUILD: dependency cycle a -> b -> a",
        "BUILD: dependency cycle cure-x -> cure_jax -> rollout -> cure-x",
        "BUILD: :cure_jax depends on :rollout; it may use ['rollout_contract']",
        "BUILD: :rollout_contract depends on :sandbox; it may use none of our targets",
    ]


def test_every_test_runs_through_the_runner(repo_root):
    for t in parse_build(repo_root):
        if t["rule"] == "py_test":
            file = t["srcs"][0]
            assert (t.get("main"), t.get("srcs"), t.get("args")) == (RUNNER, [file, RUNNER], [file]), t["name"]
            assert ":test_support" in t["deps"] and "requirement:pytest" in t["deps"], t["name"]
            assert t["size"] in ("medium", "large") and (t["size"] == "large") == ("slow" in t.get("tags", []))


@pytest.mark.parametrize(("body", "ok"), [("def test_ok():\n    assert True\n", True),
                                          ("def test_bad():\n    assert False\n", False),
                                          ("X = 1\n", False)])  # no test at all: pytest says 5
def test_runner_fails_when_a_test_fails(repo_root, tmp_path, body, ok):
    (tmp_path / "test_sample.py").write_text(body)
    r = subprocess.run([sys.executable, str(repo_root / RUNNER), "test_sample.py"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, check=False)
    assert (r.returncode == 0) == ok, r.stdout + r.stderr


def test_requirements_are_locked(repo_root):
    module = (repo_root / "MODULE.bazel").read_text()
    assert re.search(r'hub_name = "pip"', module) and '"//:requirements_lock.txt"' in module
    locked = gen_build.locked_distributions(repo_root)
    assert locked, "requirements_lock.txt pins nothing"
    required = {d.split(":", 1)[1] for t in parse_build(repo_root) for d in t.get("deps", [])
                if d.startswith("requirement:")}
    assert sorted(r for r in required if gen_build.normalize_dist(r) not in locked) == []
    assert "cure-jax" not in locked


def _copy_tree(src: pathlib.Path, dst: pathlib.Path) -> None:
    """The project's files, with BUILD regenerated (whether the real one is current is
    test_build_is_generated's business)."""
    for rel in itertools.chain(project_files(src), [".gitignore"]):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, dst / rel)
    subprocess.run([sys.executable, "tools/gen_build.py"], cwd=dst, check=True, timeout=120)


def _check(root: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root / "tools" / "gen_build.py"), "--check"], cwd=root,
                          capture_output=True, text=True, timeout=120, check=False)


def test_unlisted_module_and_test_are_reported(repo_root, tmp_path):
    _copy_tree(repo_root, tmp_path)
    assert build_problems(tmp_path) == []
    (tmp_path / "sandbox" / "brand_new.py").write_text("")
    (tmp_path / "tests" / "test_brand_new.py").write_text("")
    assert build_problems(tmp_path) == [
        "BUILD: module sandbox/brand_new.py belongs to no py_library",
        "BUILD: test file tests/test_brand_new.py has no py_test",
    ]
    r = _check(tmp_path)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "BUILD is stale" in r.stderr
    subprocess.run([sys.executable, "tools/gen_build.py"], cwd=tmp_path, check=True, timeout=120)
    assert build_problems(tmp_path) == [] and _check(tmp_path).returncode == 0
    targets = {t["name"]: t for t in parse_build(tmp_path)}
    assert "sandbox/brand_new.py" in targets["sandbox"]["srcs"]
    assert targets["test_brand_new"]["args"] == ["tests/test_brand_new.py"]


def test_generated_deps_follow_the_imports(repo_root, tmp_path):
    _copy_tree(repo_root, tmp_path)
    (tmp_path / "sandbox" / "brand_new.py").write_text(
        "import yaml\n\ndef f():\n    from rollout import parsing\n    import PIL.Image\n"
        "try:\n    import not_a_real_dist\nexcept ImportError:\n    pass\n")
    (tmp_path / "tests" / "sandbox" / "test_brand_new.py").write_text(
        "import pytest\nfrom sandbox import brand_new\n\n@pytest.mark.slow\ndef test_x():\n    pass\n")
    subprocess.run([sys.executable, "tools/gen_build.py"], cwd=tmp_path, check=True, timeout=120)
    targets = {t["name"]: t for t in parse_build(tmp_path)}
    deps = targets["sandbox"]["deps"]
    assert {":rollout", "requirement:pyyaml", "requirement:pillow"} <= set(deps), deps
    assert not any("not-a-real-dist" in d for d in deps)
    assert ("BUILD: :sandbox depends on :rollout; it may use none of our targets "
            "(sandbox/brand_new.py:4 imports rollout.parsing)") in graph_problems(list(targets.values()), tmp_path)
    test = targets["test_brand_new"]
    assert (test["size"], test["tags"]) == ("large", ["slow"]) and ":sandbox" in test["deps"]


def test_named_but_absent_file_is_reported(repo_root, tmp_path):
    _copy_tree(repo_root, tmp_path)
    (tmp_path / "sandbox" / "__init__.py").unlink()
    problems = build_problems(tmp_path)
    assert any("sandbox/__init__.py is named by" in p and "does not exist" in p for p in problems), problems
