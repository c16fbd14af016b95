"""Reads the project's Python files: which files there are, what each imports, and the cycles.

Only the syntax tree is read (nothing is imported), so it works on any tree and with the standard
library alone. An import counts wherever it is (function-local ones included: they run too), except
under ``if TYPE_CHECKING:``. tools/gen_build.py derives BUILD from it and tests/test_boundaries.py
checks with it that no module imports itself back.
"""
from __future__ import annotations

import ast
import dataclasses
import fnmatch
import itertools
import os
import pathlib
import sys

# ----------------------------------------------------------------------------- the tree

def read_gitignore(root: pathlib.Path) -> list[str]:
    path = root / ".gitignore"
    if not path.is_file():
        return []
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith(("#", "!"))]


def _ignored(rel: str, is_dir: bool, patterns: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    if name.startswith((".", "bazel-")) or name == "__pycache__":
        return True
    for pat in patterns:
        dir_only = pat.endswith("/")
        pat = pat.rstrip("/")
        if dir_only and not is_dir:
            continue
        if pat.startswith("/") or "/" in pat:
            if fnmatch.fnmatchcase(rel, pat.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(name, pat):
            return True
    return False


def project_files(root: pathlib.Path) -> list[str]:
    """Every file of the project (relative, "/"-separated, sorted): what .gitignore does not ignore,
    less hidden files and directories."""
    patterns = read_gitignore(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = pathlib.Path(dirpath).relative_to(root).as_posix()
        base = "" if base == "." else base + "/"
        dirnames[:] = sorted(d for d in dirnames if not _ignored(base + d, True, patterns))
        out += [base + f for f in filenames if not _ignored(base + f, False, patterns)]
    return sorted(out)


def module_name(rel: str) -> str:
    """tests/helpers/cure_runs.py -> tests.helpers.cure_runs; rollout/__init__.py -> rollout."""
    parts = rel[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


# ----------------------------------------------------------------------------- imports

@dataclasses.dataclass(frozen=True)
class Import:
    """One import site: the dotted names it may mean (most specific first), where, and how."""
    candidates: tuple[str, ...]
    lineno: int
    guarded: bool  # inside `try: ... except ImportError`


@dataclasses.dataclass
class SourceFile:
    rel: str
    module: str
    imports: list[Import]
    runs_modules: list[str]     # modules started as `python -m <module>`
    runs_commands: list[str]    # commands started or looked up: `run(["cmd", ...])`, `which("cmd")`
    strings: set[str]           # every non-docstring string constant
    markers: set[str]           # pytest markers used (`pytest.mark.<name>`)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


# Calls that start a command given as a list (subprocess's and os's).
_RUNNERS = ("run", "Popen", "call", "check_call", "check_output", "execv", "execvp")


def scan_source(rel: str, text: str) -> SourceFile:
    """Reads one Python file's imports (every one, function-local too, but not the ones under
    `if TYPE_CHECKING:`), the modules it starts with `-m` and the commands it runs, its string
    constants and its pytest markers."""
    tree = ast.parse(text, filename=rel)
    module = module_name(rel)
    package = module if rel.endswith("__init__.py") else module.rpartition(".")[0]
    imports: list[Import] = []
    runs: list[str] = []
    commands: list[str] = []
    docstrings = _docstrings(tree)
    strings: set[str] = set()
    markers: set[str] = set()

    def absolute(level: int, name: str | None) -> str:
        if not level:
            return name or ""
        base = package.split(".") if package else []
        base = base[: len(base) - (level - 1)] if level > 1 else base
        return ".".join(base + ([name] if name else []))

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, guarded)
            return
        if isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            inner = guarded or any(_catches_import_error(h) for h in node.handlers)
            for child in node.body:
                visit(child, inner)
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, guarded)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                imports.append(Import((alias.name,), node.lineno, guarded))
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node.level, node.module)
            for alias in node.names:
                subs = () if alias.name == "*" else (f"{base}.{alias.name}" if base else alias.name,)
                imports.append(Import(subs + ((base,) if base else ()), node.lineno, guarded))
        elif isinstance(node, ast.Call):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if (fname in ("import_module", "__import__") and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                imports.append(Import((node.args[0].value,), node.lineno, guarded))
            first = node.args[0] if node.args else None
            if fname in _RUNNERS and isinstance(first, (ast.List, ast.Tuple)) and first.elts:
                first = first.elts[0]
            if (fname in _RUNNERS or fname == "which") and isinstance(first, ast.Constant) and isinstance(
                    first.value, str):
                commands.append(first.value)
        elif isinstance(node, (ast.List, ast.Tuple)):
            elts = node.elts
            for a, b in itertools.pairwise(elts):
                if (isinstance(a, ast.Constant) and a.value == "-m"
                        and isinstance(b, ast.Constant) and isinstance(b.value, str)):
                    runs.append(b.value)
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Attribute) and node.value.attr == "mark":
                markers.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            strings.add(node.value)
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return SourceFile(rel, module, imports, runs, commands, strings, markers)


# ----------------------------------------------------------------------------- the project

@dataclasses.dataclass
class Project:
    root: pathlib.Path
    files: list[str]                      # every project file
    sources: dict[str, SourceFile]        # rel -> scanned Python file
    modules: dict[str, str]               # dotted module name -> rel

    def resolve(self, imp: Import, importer: str) -> str | None:
        """The project file an import loads (None: not ours). A name that is not a module from the
        root (nor of the standard library) is also tried beside the importer, as a script run by
        path or a pytest test file sees it."""
        for name in imp.candidates:
            if name in self.modules:
                return self.modules[name]
        prefix = module_name(importer).rpartition(".")[0]
        if importer.endswith("/__init__.py"):
            prefix = module_name(importer)
        for name in imp.candidates:
            if prefix and name.split(".")[0] not in sys.stdlib_module_names and f"{prefix}.{name}" in self.modules:
                return self.modules[f"{prefix}.{name}"]
        return None

    def imported_files(self, rel: str) -> list[tuple[str, Import]]:
        """(project file, import site) for each import of `rel` that loads a project file."""
        out = []
        for imp in self.sources[rel].imports:
            target = self.resolve(imp, rel)
            if target is not None and target != rel:
                out.append((target, imp))
        return out


def load_project(root: pathlib.Path) -> Project:
    files = project_files(root)
    sources, modules = {}, {}
    for rel in files:
        if rel.endswith(".py"):
            sources[rel] = scan_source(rel, (root / rel).read_text(encoding="utf-8"))
            modules[module_name(rel)] = rel
    return Project(root, files, sources, modules)


def packages(project: Project) -> list[str]:
    """Top-level packages: directories of the root holding an __init__.py."""
    return sorted(rel.split("/")[0] for rel in project.files if rel.count("/") == 1
                  and rel.endswith("/__init__.py"))


def import_graph(project: Project) -> dict[str, dict[str, int]]:
    """module -> {imported project module: line of the first import}, for every project file."""
    graph: dict[str, dict[str, int]] = {}
    for rel, src in sorted(project.sources.items()):
        edges = graph.setdefault(src.module, {})
        for target, imp in project.imported_files(rel):
            edges.setdefault(module_name(target), imp.lineno)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle [a, b, ..., a] per strongly connected component of more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for comp in sorted(components):
        members, start = set(comp), comp[0]
        paths = {start: [start]}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph.get(v, {})):
                    if w == start:
                        found = paths[v] + [start]
                        break
                    if w in members and w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if found:
                    break
            frontier = nxt
        cycles.append(found)
    return cycles
