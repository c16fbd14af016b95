"""Problem records in CURE's "Stdio format", their validation, and loaders.

A problem is a JSON object with ``question``, ``test_input``/``test_output`` (private
ground-truth tests, parallel lists of str), optional ``example_input``/``example_output``
(public tests), ``test_time_limit`` (seconds, default 1) and optional ``task_id``,
``dataset``, ``difficulty``, ``exe_method`` ("stdin") and ``solutions``.

Validation is strict and loud: a malformed row raises :class:`ProblemFormatError` with a
one-line message naming the file, the row and the field. No row is ever dropped.

Ground-truth tests: a ``Problem`` may hold none (``labeled`` False): label-free training
(``cure.label_free``) scores codes against generated tests and loads such problems
(``require_tests=False`` in the loaders). Everything else needs them: the loaders reject a
problem without them by default, and evaluation checks its problems (:func:`check_labeled`).

numpy/stdlib only: the JAX learner imports this module.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "EMBEDDED_SPLITS",
    "Problem",
    "ProblemFormatError",
    "check_labeled",
    "embedded_dir",
    "embedded_problems",
    "load_problems",
    "load_problems_file",
    "problems_from_records",
    "problems_to_json",
    "write_problems",
]

# Fields with a meaning in the Stdio format; anything else in a row is ignored (the
# reference keeps generated outputs in the same objects, e.g. "generated_code").
_TEST_FIELDS = ("test_input", "test_output")
_EXAMPLE_FIELDS = ("example_input", "example_output")
EMBEDDED_SPLITS = ("train", "eval")
_DATA_SUFFIXES = (".json", ".jsonl")


class ProblemFormatError(ValueError):
    """A problem row (or a problem file) does not follow the Stdio format.

    ``str(err)`` is one line: ``<source>, row 3 (0-based index), field 'test_output': <why>``.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str,
        row: int | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.source = source
        self.row = row
        self.line = line
        self.field = field
        self.reason = message
        where = [source]
        if row is not None:
            where.append(f"row {row} (0-based index)")
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(" ".join(f"{', '.join(where)}: {message}".split()))


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


@dataclasses.dataclass(frozen=True)
class Problem:
    """One stdin/stdout coding problem (mirrors a CURE Stdio-format JSON object).

    ``test_input``/``test_output`` are the private ground-truth tests (never shown to the
    model; none only in label-free training, see the module doc); ``example_input`` /
    ``example_output`` are the public tests shown in prompts. Construction validates every
    field, so a ``Problem`` in hand is always well formed.
    """

    task_id: str
    question: str
    test_input: tuple[str, ...]
    test_output: tuple[str, ...]
    example_input: tuple[str, ...] = ()
    example_output: tuple[str, ...] = ()
    test_time_limit: float = 1.0
    dataset: str = ""
    difficulty: str | None = None
    solutions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Lists are accepted for convenience and frozen into tuples.
        for name in ("test_input", "test_output", "example_input", "example_output", "solutions"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        _check_problem(self, source="<Problem>")

    # -- conversion -------------------------------------------------------------------

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        source: str = "<dict>",
        row: int | None = None,
        line: int | None = None,
        default_dataset: str = "",
        require_tests: bool = True,
    ) -> Problem:
        """Validate one Stdio-format object and build a ``Problem``.

        ``source``/``row``/``line`` only label errors (``row`` is a 0-based index into a JSON
        list, ``line`` a 1-based line of a JSONL file). A missing ``task_id`` becomes
        ``"<dataset>/<row>"``; a missing ``dataset`` becomes ``default_dataset``. Without
        ground-truth tests (missing or empty ``test_input``/``test_output``) the row is an
        error unless ``require_tests`` is False (label-free training).
        """

        def fail(message: str, field: str | None = None) -> ProblemFormatError:
            return ProblemFormatError(message, source=source, row=row, line=line, field=field)

        if not isinstance(d, Mapping):
            raise fail(f"expected a JSON object, got {_type_name(d)}")

        question = d.get("question")
        if "question" not in d:
            raise fail("missing required field", "question")
        if not isinstance(question, str):
            raise fail(f"must be a string, got {_type_name(question)}", "question")
        if not question.strip():
            raise fail("is empty", "question")

        # Both test fields absent: no ground truth (checked below, naming the problem); one
        # of them absent: a malformed row.
        either = any(d.get(f) is not None for f in _TEST_FIELDS)
        tests = _parallel_lists(d, _TEST_FIELDS, required=require_tests and either, fail=fail)
        examples = _parallel_lists(d, _EXAMPLE_FIELDS, required=False, fail=fail)

        limit = d.get("test_time_limit", 1)
        if limit is None:
            limit = 1
        if isinstance(limit, bool) or not isinstance(limit, (int, float)):
            raise fail(f"must be a number of seconds, got {_type_name(limit)}", "test_time_limit")
        if not math.isfinite(limit) or limit <= 0:
            raise fail(f"must be a finite number > 0, got {limit!r}", "test_time_limit")

        exe_method = d.get("exe_method", "stdin")
        if exe_method not in (None, "stdin"):
            raise fail(f"only 'stdin' programs are supported, got {exe_method!r}", "exe_method")

        dataset = d.get("dataset", default_dataset)
        if dataset is None:
            dataset = default_dataset
        if not isinstance(dataset, str):
            raise fail(f"must be a string, got {_type_name(dataset)}", "dataset")

        task_id = d.get("task_id")
        if task_id is None:
            index = row if row is not None else (line if line is not None else 0)
            task_id = f"{dataset or 'problem'}/{index}"
        elif isinstance(task_id, bool) or not isinstance(task_id, (str, int)):
            raise fail(f"must be a string or integer, got {_type_name(task_id)}", "task_id")
        task_id = str(task_id)
        if not task_id.strip():
            raise fail("is empty", "task_id")
        if require_tests and not tests[0]:
            raise fail(f"the private test list is empty or missing: problem {task_id!r} has no "
                       f"ground-truth tests, which evaluation and ground-truth rewards need "
                       f"(only label-free training, cure.label_free, loads such problems)",
                       "test_input")

        difficulty = d.get("difficulty")
        if difficulty is not None:
            if isinstance(difficulty, bool) or not isinstance(difficulty, (str, int, float)):
                raise fail(f"must be a string or number, got {_type_name(difficulty)}",
                           "difficulty")
            difficulty = str(difficulty)

        solutions = d.get("solutions")
        if solutions is None:
            solutions = ()
        else:
            solutions = _string_list(solutions, "solutions", fail)

        return cls(
            task_id=task_id,
            question=question,
            test_input=tests[0],
            test_output=tests[1],
            example_input=examples[0],
            example_output=examples[1],
            test_time_limit=float(limit),
            dataset=dataset,
            difficulty=difficulty,
            solutions=solutions,
        )

    def to_dict(self) -> dict[str, Any]:
        """The Stdio-format JSON object (lists, not tuples); ``from_dict`` inverts it."""
        out: dict[str, Any] = {
            "task_id": self.task_id,
            "dataset": self.dataset,
            "question": self.question,
            "test_time_limit": self.test_time_limit,
            "example_input": list(self.example_input),
            "example_output": list(self.example_output),
            "test_input": list(self.test_input),
            "test_output": list(self.test_output),
            "exe_method": "stdin",
        }
        if self.difficulty is not None:
            out["difficulty"] = self.difficulty
        if self.solutions:
            out["solutions"] = list(self.solutions)
        return out

    # -- convenience ------------------------------------------------------------------

    @property
    def num_tests(self) -> int:
        """Number of private ground-truth tests."""
        return len(self.test_input)

    @property
    def labeled(self) -> bool:
        """Whether the problem has ground-truth tests (only label-free training does without)."""
        return bool(self.test_input)

    def private_tests(self) -> list[tuple[str, str]]:
        """(input, expected output) pairs of the private ground-truth tests."""
        return list(zip(self.test_input, self.test_output))

    def public_tests(self) -> list[tuple[str, str]]:
        """(input, expected output) pairs of the public examples."""
        return list(zip(self.example_input, self.example_output))


def _string_list(value: Any, field: str, fail) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise fail(f"must be a list of strings, got {_type_name(value)}", field)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise fail(f"item {i} must be a string, got {_type_name(item)}", field)
    return tuple(value)


def _parallel_lists(d: Mapping[str, Any], fields: tuple[str, str], *, required: bool, fail
                    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Read two parallel string lists (inputs, outputs) and check they have equal length."""
    a_name, b_name = fields
    present = [name in d and d[name] is not None for name in fields]
    if not any(present) and not required:
        return (), ()
    for name, here in zip(fields, present):
        if not here:
            other = b_name if name == a_name else a_name
            why = "missing required field" if required else f"missing while {other!r} is present"
            raise fail(why, name)
    a = _string_list(d[a_name], a_name, fail)
    b = _string_list(d[b_name], b_name, fail)
    if len(a) != len(b):
        raise fail(f"has {len(b)} items but {a_name!r} has {len(a)}", b_name)
    return a, b


def _check_problem(p: Problem, *, source: str) -> None:
    """Re-validate a directly constructed Problem (same rules as ``from_dict``)."""

    def fail(message: str, field: str | None = None) -> ProblemFormatError:
        return ProblemFormatError(message, source=source, field=field)

    if not isinstance(p.task_id, str) or not p.task_id.strip():
        raise fail(f"must be a non-empty string, got {p.task_id!r}", "task_id")
    if not isinstance(p.question, str) or not p.question.strip():
        raise fail("must be a non-empty string", "question")
    for name in ("test_input", "test_output", "example_input", "example_output", "solutions"):
        _string_list(getattr(p, name), name, fail)
    if len(p.test_input) != len(p.test_output):
        raise fail(f"has {len(p.test_output)} items but 'test_input' has {len(p.test_input)}",
                   "test_output")
    if len(p.example_input) != len(p.example_output):
        raise fail(f"has {len(p.example_output)} items but 'example_input' has "
                   f"{len(p.example_input)}", "example_output")
    limit = p.test_time_limit
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not (
            math.isfinite(limit) and limit > 0):
        raise fail(f"must be a finite number > 0, got {limit!r}", "test_time_limit")
    if not isinstance(p.dataset, str):
        raise fail(f"must be a string, got {_type_name(p.dataset)}", "dataset")
    if p.difficulty is not None and not isinstance(p.difficulty, str):
        raise fail(f"must be a string or None, got {_type_name(p.difficulty)}", "difficulty")


# -- loaders ---------------------------------------------------------------------------


def _check_unique_ids(problems: Sequence[Problem], labels: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for p, label in zip(problems, labels):
        if p.task_id in seen:
            raise ProblemFormatError(
                f"duplicate task_id {p.task_id!r} (first seen at {seen[p.task_id]})",
                source=label, field="task_id")
        seen[p.task_id] = label


def problems_from_records(
    records: Iterable[Mapping[str, Any]],
    *,
    source: str,
    default_dataset: str = "",
    allow_duplicate_ids: bool = False,
    require_tests: bool = True,
) -> list[Problem]:
    """Validate already-parsed records (a JSON list); errors name ``source`` and the row."""
    problems = [Problem.from_dict(r, source=source, row=i, default_dataset=default_dataset,
                                  require_tests=require_tests)
                for i, r in enumerate(records)]
    if not allow_duplicate_ids:
        _check_unique_ids(problems, [f"{source}, row {i} (0-based index)"
                                     for i in range(len(problems))])
    return problems


def _read_json_list(path: pathlib.Path, source: str, default_dataset: str,
                    require_tests: bool) -> tuple[list[Problem], list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ProblemFormatError(f"not UTF-8 text ({e.reason} at byte {e.start})",
                                 source=source) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProblemFormatError(f"invalid JSON: {e.msg} (column {e.colno})", source=source,
                                 line=e.lineno) from None
    if not isinstance(data, list):
        hint = " (JSON Lines files must end in .jsonl)" if isinstance(data, dict) else ""
        raise ProblemFormatError(
            f"expected a JSON list of problem objects, got {_type_name(data)}{hint}",
            source=source)
    problems = [Problem.from_dict(r, source=source, row=i, default_dataset=default_dataset,
                                  require_tests=require_tests) for i, r in enumerate(data)]
    return problems, [f"{source}, row {i} (0-based index)" for i in range(len(problems))]


def _read_jsonl(path: pathlib.Path, source: str, default_dataset: str,
                require_tests: bool) -> tuple[list[Problem], list[str]]:
    problems: list[Problem] = []
    labels: list[str] = []
    with path.open("r", encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue  # blank lines separate nothing; they are not rows
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ProblemFormatError(f"invalid JSON: {e.msg} (column {e.colno})",
                                         source=source, line=lineno) from None
            # task ids default to the 0-based record index, like a JSON list's row index.
            p = Problem.from_dict(record, source=source, line=lineno,
                                  default_dataset=default_dataset, require_tests=require_tests)
            if not (isinstance(record, Mapping) and record.get("task_id") is not None):
                p = dataclasses.replace(p, task_id=f"{p.dataset or 'problem'}/{len(problems)}")
            problems.append(p)
            labels.append(f"{source}, line {lineno}")
    return problems, labels


def load_problems_file(
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    source: str | None = None,
    dataset: str | None = None,
    allow_duplicate_ids: bool = False,
    require_tests: bool = True,
) -> list[Problem]:
    """Load one file: a JSON list of objects (``.json``) or JSON Lines (``.jsonl``).

    ``fmt`` ("json"/"jsonl") overrides the suffix; ``source`` overrides the file name used
    in error messages; ``dataset`` (default: the file's stem) fills rows without one;
    ``require_tests`` False admits problems without ground-truth tests (label-free training).
    """
    p = pathlib.Path(path)
    label = source if source is not None else str(p)
    kind = fmt or p.suffix.lower().lstrip(".")
    if kind not in ("json", "jsonl"):
        raise ProblemFormatError(f"unknown problem file type {p.suffix!r} (use .json or .jsonl)",
                                 source=label)
    if not p.is_file():
        raise FileNotFoundError(f"{label}: no such problem file")
    default_dataset = dataset if dataset is not None else p.stem
    reader = _read_json_list if kind == "json" else _read_jsonl
    problems, labels = reader(p, label, default_dataset, require_tests)
    if not allow_duplicate_ids:
        _check_unique_ids(problems, labels)
    return problems


def load_problems(path: str | os.PathLike[str], *, dataset: str | None = None,
                  allow_duplicate_ids: bool = False, require_tests: bool = True
                  ) -> list[Problem]:
    """Load problems from a ``.json`` list, a ``.jsonl`` file, or a directory of them.

    A directory is read non-recursively in sorted file-name order; it must contain at least
    one ``.json``/``.jsonl`` file. Task ids must be unique across everything loaded unless
    ``allow_duplicate_ids``; problems without ground-truth tests are errors unless
    ``require_tests`` is False (label-free training).
    """
    p = pathlib.Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir()
                       if f.is_file() and f.suffix.lower() in _DATA_SUFFIXES
                       and not f.name.startswith("."))
        if not files:
            raise ProblemFormatError("directory holds no .json or .jsonl problem files",
                                     source=str(p))
        problems: list[Problem] = []
        labels: list[str] = []
        for f in files:
            got = load_problems_file(f, dataset=dataset, allow_duplicate_ids=True,
                                     require_tests=require_tests)
            problems.extend(got)
            labels.extend(f"{f}, problem {p_.task_id!r}" for p_ in got)
        if not allow_duplicate_ids:
            _check_unique_ids(problems, labels)
        return problems
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such problem file or directory")
    return load_problems_file(p, dataset=dataset, allow_duplicate_ids=allow_duplicate_ids,
                              require_tests=require_tests)


def check_labeled(problems: Iterable[Problem], what: str = "evaluation") -> None:
    """``what`` scores codes by ground-truth tests: the first problem without any is a one-line
    :class:`ProblemFormatError` naming its dataset (the file's stem by default) and task id."""
    for p in problems:
        if not p.labeled:
            raise ProblemFormatError(
                f"problem {p.task_id!r} has no ground-truth tests; {what} needs them (only "
                f"label-free training, cure.label_free, loads such problems)",
                source=f"dataset {p.dataset or '<unnamed>'!r}", field="test_input")


def problems_to_json(problems: Iterable[Problem]) -> str:
    """Serialise problems as a pretty JSON list in the Stdio format (stable key order)."""
    return json.dumps([p.to_dict() for p in problems], indent=1, ensure_ascii=False) + "\n"


def write_problems(problems: Iterable[Problem], path: str | os.PathLike[str]) -> None:
    """Write a JSON list atomically (temporary file in the same directory + ``os.replace``)."""
    dest = pathlib.Path(path)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(problems_to_json(problems), encoding="utf-8")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


# -- the embedded dataset (rollout/paper_problems) -------------------------------------------------------------------


def embedded_dir() -> pathlib.Path:
    """Directory of the embedded dataset (``embedded:<split>``) shipped in the package."""
    return pathlib.Path(__file__).resolve().parent / "paper_problems"


@functools.cache
def _embedded_split(split: str) -> tuple[Problem, ...]:
    path = embedded_dir() / f"{split}.json"
    return tuple(load_problems_file(path, dataset=f"embedded-{split}"))


def embedded_problems(split: str = "train") -> list[Problem]:
    """The small stdin/stdout problems written for this project and shipped in the package.

    ``split`` is "train", "eval" (disjoint from train) or "all" (train then eval).
    """
    if split == "all":
        return [p for s in EMBEDDED_SPLITS for p in _embedded_split(s)]
    if split not in EMBEDDED_SPLITS:
        raise ValueError(f"unknown embedded split {split!r}; expected one of "
                         f"{', '.join(EMBEDDED_SPLITS + ('all',))}")
    return list(_embedded_split(split))
