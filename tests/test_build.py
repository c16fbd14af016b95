"""Keeps the Bazel BUILD file in step with the tree.

BUILD is Starlark, a Python subset, so it is parsed with `ast` and its rule calls are read as
records. Every package module must belong to a py_library, every test file to a py_test, every
console script in pyproject.toml to a py_binary, and every file BUILD names must exist.
"""
from __future__ import annotations

import ast
import pathlib
import shutil
import tomllib

PACKAGES = ("cure_jax", "rollout", "sandbox")
RULES = ("py_library", "py_binary", "py_test")


def _literal(node: ast.AST, root: pathlib.Path):
    """Evaluates the Starlark subset BUILD uses: literals, lists, `+` and glob()."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "glob":
        patterns = _literal(node.args[0], root)
        return sorted({str(p.relative_to(root)) for pat in patterns for p in root.glob(pat)})
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
                               if kw.arg in ("name", "srcs", "data", "main")})
                targets.append(record)
    return targets


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
                named_files.setdefault(f, []).append(t["name"])
        if "main" in t:
            named_files.setdefault(t["main"], []).append(t["name"])
    for f, owners in sorted(named_files.items()):
        if not (root / f).is_file():
            problems.append(f"BUILD: {f} is named by {owners[0]!r} but does not exist")

    library_srcs = {f for t in targets if t["rule"] == "py_library" for f in t.get("srcs", [])}
    for pkg in PACKAGES:
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


def test_build_matches_tree(repo_root):
    assert build_problems(repo_root) == []


def _copy_tree(src: pathlib.Path, dst: pathlib.Path) -> None:
    shutil.copy(src / "BUILD", dst / "BUILD")
    shutil.copy(src / "pyproject.toml", dst / "pyproject.toml")
    for top in PACKAGES + ("tests",):
        shutil.copytree(src / top, dst / top, ignore=shutil.ignore_patterns("__pycache__"))


def test_unlisted_module_and_test_are_reported(repo_root, tmp_path):
    _copy_tree(repo_root, tmp_path)
    assert build_problems(tmp_path) == []
    (tmp_path / "sandbox" / "brand_new.py").write_text("")
    (tmp_path / "tests" / "test_brand_new.py").write_text("")
    assert build_problems(tmp_path) == [
        "BUILD: module sandbox/brand_new.py belongs to no py_library",
        "BUILD: test file tests/test_brand_new.py has no py_test",
    ]


def test_named_but_absent_file_is_reported(repo_root, tmp_path):
    _copy_tree(repo_root, tmp_path)
    (tmp_path / "sandbox" / "__init__.py").unlink()
    problems = build_problems(tmp_path)
    assert any("sandbox/__init__.py is named by" in p and "does not exist" in p for p in problems), problems
