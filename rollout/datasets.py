"""The one parser of data specs: which problems ``data.train`` / ``data.eval`` / ``dataset`` name.

cure-train's rollout server and cure-eval read their problems through this module, so a spec
means the same everywhere. A spec is a comma-separated list; each item is

* ``embedded:<split>`` (also ``embedded-<split>``): the problems shipped in the package;
* a path: a .json/.jsonl file or a directory of them (rollout.problems.load_problems);
* a hub dataset name (LiveBench, MBPP, LiveCodeBench, CodeContests, CodeForces; see
  rollout.hub): read from ``<data_dir>/<Name>.json``, downloaded there first when missing.

Errors are :class:`DatasetError`, one line naming the item. A problem without ground-truth
tests is a one-line ``rollout.problems.ProblemFormatError`` naming its file and row, unless
``require_tests`` is False (label-free training: ``cure.label_free``).
"""
from __future__ import annotations

import os
import pathlib

from rollout.eval_settings import EvalError
from rollout.problems import Problem, embedded_problems, load_problems

__all__ = ["DatasetError", "load_dataset", "resolve_datasets", "spec_problems"]


class DatasetError(EvalError):
    """A data spec that names no problems (unknown, missing, empty or listed twice)."""


def load_dataset(item: str, *, data_dir: str | os.PathLike[str] = "data",
                 download: bool = True, require_tests: bool = True
                 ) -> tuple[str, list[Problem]]:
    """(label, problems) of one spec item (see the module doc)."""
    if item.startswith(("embedded:", "embedded-")):
        split = item.split(":", 1)[1] if ":" in item else item.split("-", 1)[1]
        return f"embedded-{split}", embedded_problems(split)
    if pathlib.Path(item).exists():
        path = pathlib.Path(item)
        return (path.stem if path.is_file() else path.name), load_problems(
            path, require_tests=require_tests)
    from rollout import hub  # stdlib only; the hub client loads lazily

    try:
        info = hub.resolve_dataset(item)
    except hub.UnknownDatasetError as e:
        raise DatasetError(f"dataset {item!r} is not a file, a directory, embedded:<split> "
                           f"or a known dataset ({e})") from None
    path = pathlib.Path(data_dir) / f"{info.name}.json"
    if not path.exists():
        if not download:
            raise DatasetError(f"dataset {info.name}: {path} not found "
                               f"(run: cure-data download --dataset={info.name} --out={data_dir})")
        try:
            path = hub.download_dataset(info.name, data_dir).path
        except hub.DatasetDownloadError as e:
            raise DatasetError(f"dataset {info.name}: {e}") from None
    return info.name, load_problems(path, require_tests=require_tests)


def resolve_datasets(spec: str, *, data_dir: str | os.PathLike[str] = "data",
                     max_problems: int = 0, download: bool = True, require_tests: bool = True
                     ) -> dict[str, list[Problem]]:
    """{label: problems} of every item of ``spec``, in the given order; ``max_problems`` > 0
    keeps the first that many problems of each."""
    out: dict[str, list[Problem]] = {}
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        label, problems = load_dataset(item, data_dir=data_dir, download=download,
                                       require_tests=require_tests)
        if not problems:
            raise DatasetError(f"dataset {item!r} holds no problems")
        if label in out:
            raise DatasetError(f"dataset {item!r} is listed twice")
        out[label] = problems[:max_problems] if max_problems > 0 else problems
    if not out:
        raise DatasetError("dataset: empty; give a name, a path or embedded:eval")
    return out


def spec_problems(spec: str, *, data_dir: str | os.PathLike[str] = "data",
                  download: bool = True, require_tests: bool = True) -> list[Problem]:
    """Every problem of ``spec`` as one list (the datasets in the given order): a training or
    held-out split of cure-train."""
    return [p for problems in resolve_datasets(spec, data_dir=data_dir, download=download,
                                               require_tests=require_tests).values()
            for p in problems]
