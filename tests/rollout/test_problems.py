"""Problem record validation and the JSON / JSONL / directory loaders (rollout.problems)."""
from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.problems import (
    Problem,
    ProblemFormatError,
    load_problems,
    load_problems_file,
    problems_from_records,
    problems_to_json,
    write_problems,
)


def row(**over):
    d = {
        "task_id": "t0",
        "question": "Print the sum of n numbers.",
        "test_time_limit": 1,
        "example_input": ["5\n1 2 3 4 5\n"],
        "example_output": ["15"],
        "test_input": ["1\n7\n", "2\n1 1\n"],
        "test_output": ["7", "2"],
    }
    d.update(over)
    return {k: v for k, v in d.items() if v is not _DROP}


_DROP = object()


def write_json(path: pathlib.Path, rows) -> pathlib.Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


# -- from_dict ----------------------------------------------------------------------------


def test_from_dict_reads_every_field():
    p = Problem.from_dict(row(dataset="LiveBench", difficulty="easy", solutions=["print(1)"],
                              test_time_limit=8, exe_method="stdin", extra_field=[1, 2]))
    assert p.task_id == "t0"
    assert p.question.startswith("Print the sum")
    assert p.test_input == ("1\n7\n", "2\n1 1\n") and p.test_output == ("7", "2")
    assert p.example_input == ("5\n1 2 3 4 5\n",) and p.example_output == ("15",)
    assert p.test_time_limit == 8.0 and isinstance(p.test_time_limit, float)
    assert p.dataset == "LiveBench" and p.difficulty == "easy"
    assert p.solutions == ("print(1)",)
    assert p.private_tests() == [("1\n7\n", "7"), ("2\n1 1\n", "2")]
    assert p.public_tests() == [("5\n1 2 3 4 5\n", "15")]
    assert p.num_tests == 2


def test_defaults_for_optional_fields():
    p = Problem.from_dict(row(task_id=_DROP, test_time_limit=_DROP, example_input=_DROP,
                              example_output=_DROP), source="x.json", row=4,
                          default_dataset="MBPP")
    assert p.test_time_limit == 1.0
    assert p.example_input == () and p.example_output == ()
    assert p.dataset == "MBPP"
    assert p.task_id == "MBPP/4"
    assert p.difficulty is None and p.solutions == ()


def test_numeric_ids_and_difficulty_become_strings():
    p = Problem.from_dict(row(task_id=17, difficulty=1500))
    assert p.task_id == "17" and p.difficulty == "1500"


@pytest.mark.parametrize("limit", [1, 8, 0.5, 2.5])
def test_time_limit_accepts_positive_numbers(limit):
    assert Problem.from_dict(row(test_time_limit=limit)).test_time_limit == float(limit)


@pytest.mark.parametrize("limit", [0, -1, "1", True, float("nan"), float("inf"), [1]])
def test_time_limit_rejects_bad_values(limit):
    with pytest.raises(ProblemFormatError) as e:
        Problem.from_dict(row(test_time_limit=limit), source="data.json", row=2)
    assert e.value.field == "test_time_limit"
    assert "data.json" in str(e.value) and "row 2" in str(e.value)


@pytest.mark.parametrize("field", ["question", "test_input", "test_output"])
def test_missing_required_field_names_file_row_and_field(field):
    with pytest.raises(ProblemFormatError) as e:
        Problem.from_dict(row(**{field: _DROP}), source="CodeContests.json", row=3)
    msg = str(e.value)
    assert msg == ("CodeContests.json, row 3 (0-based index), field "
                   f"{field!r}: missing required field")
    assert (e.value.source, e.value.row, e.value.field) == ("CodeContests.json", 3, field)
    assert "\n" not in msg


@pytest.mark.parametrize("present,missing", [("example_input", "example_output"),
                                             ("example_output", "example_input")])
def test_half_of_the_public_tests_missing(present, missing):
    with pytest.raises(ProblemFormatError, match=f"'{missing}': missing while '{present}'"):
        Problem.from_dict(row(**{missing: _DROP}))


@pytest.mark.parametrize("a,b", [("test_input", "test_output"),
                                 ("example_input", "example_output")])
def test_parallel_lists_must_have_equal_length(a, b):
    d = row()
    d[b] = list(d[b]) + ["extra"]
    with pytest.raises(ProblemFormatError) as e:
        Problem.from_dict(d, source="f.json", row=0)
    assert e.value.field == b
    assert f"has {len(d[b])} items but '{a}' has {len(d[a])}" in str(e.value)


@pytest.mark.parametrize("field,value,why", [
    ("question", 5, "must be a string, got int"),
    ("question", None, "must be a string, got null"),
    ("question", "   ", "is empty"),
    ("test_input", "1\n", "must be a list of strings, got str"),
    ("test_input", ["1\n", 2], "item 1 must be a string, got int"),
    ("test_output", ["7", None], "item 1 must be a string, got null"),
    ("example_output", [15], "item 0 must be a string, got int"),
    ("solutions", "print(1)", "must be a list of strings, got str"),
    ("task_id", ["a"], "must be a string or integer, got list"),
    ("task_id", "", "is empty"),
    ("dataset", 3, "must be a string, got int"),
    ("difficulty", {"x": 1}, "must be a string or number, got dict"),
    ("exe_method", "functional", "only 'stdin' programs are supported"),
])
def test_wrong_types_are_rejected_with_the_field(field, value, why):
    with pytest.raises(ProblemFormatError) as e:
        Problem.from_dict(row(**{field: value}), source="f.json", row=1)
    assert e.value.field == field
    assert why in str(e.value)


def test_empty_private_test_list_is_rejected():
    with pytest.raises(ProblemFormatError, match="'test_input': the private test list is empty"):
        Problem.from_dict(row(test_input=[], test_output=[]))


def test_empty_public_test_list_is_allowed():
    p = Problem.from_dict(row(example_input=[], example_output=[]))
    assert p.example_input == ()


def test_row_that_is_not_an_object():
    with pytest.raises(ProblemFormatError, match=r"f.json, row 0 \(0-based index\): expected a "
                                                 r"JSON object, got list"):
        Problem.from_dict(["question"], source="f.json", row=0)


# -- direct construction ------------------------------------------------------------------


def test_direct_construction_validates_and_freezes_lists():
    p = Problem("a", "q?", ["1\n"], ["1"])
    assert p.test_input == ("1\n",) and isinstance(p.test_output, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.question = "other"  # type: ignore[misc]
    assert hash(p) == hash(Problem("a", "q?", ("1\n",), ("1",)))
    with pytest.raises(ProblemFormatError, match="'test_output'"):
        Problem("a", "q?", ("1\n",), ("1", "2"))
    assert not Problem("a", "q?", (), ()).labeled  # label-free training; loaders reject it
    with pytest.raises(ProblemFormatError, match="'test_time_limit'"):
        Problem("a", "q?", ("1\n",), ("1",), test_time_limit=0)
    with pytest.raises(ProblemFormatError, match="'test_input': item 0 must be a string"):
        Problem("a", "q?", (1,), ("1",))  # type: ignore[arg-type]


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(question=text.filter(str.strip), tests=st.lists(st.tuples(text, text), min_size=1,
                                                        max_size=4),
       examples=st.lists(st.tuples(text, text), max_size=2),
       limit=st.floats(min_value=0.01, max_value=100), difficulty=st.none() | text)
def test_to_dict_from_dict_and_json_round_trip(question, tests, examples, limit, difficulty):
    p = Problem(task_id="id/1", question=question, test_input=[a for a, _ in tests],
                test_output=[b for _, b in tests], example_input=[a for a, _ in examples],
                example_output=[b for _, b in examples], test_time_limit=limit,
                dataset="d", difficulty=difficulty, solutions=("print(1)",))
    assert Problem.from_dict(p.to_dict()) == p
    assert problems_from_records(json.loads(problems_to_json([p])), source="mem") == [p]


# -- loaders ------------------------------------------------------------------------------


def test_load_json_list_keeps_every_row_in_order(tmp_path):
    rows = [row(task_id=f"t{i}", question=f"q{i}") for i in range(5)]
    got = load_problems(write_json(tmp_path / "LiveBench.json", rows))
    assert [p.task_id for p in got] == ["t0", "t1", "t2", "t3", "t4"]
    assert all(p.dataset == "LiveBench" for p in got)  # the file stem fills a missing dataset


def test_one_bad_row_fails_the_whole_file_naming_it(tmp_path):
    rows = [row(task_id=f"t{i}") for i in range(4)]
    rows[2]["test_output"] = ["7"]  # shorter than test_input
    path = write_json(tmp_path / "d.json", rows)
    with pytest.raises(ProblemFormatError) as e:
        load_problems(path)
    assert str(e.value).startswith(f"{path}, row 2 (0-based index), field 'test_output'")


def test_ids_default_to_dataset_and_row(tmp_path):
    rows = [row(task_id=_DROP) for _ in range(3)]
    got = load_problems(write_json(tmp_path / "MBPP.json", rows))
    assert [p.task_id for p in got] == ["MBPP/0", "MBPP/1", "MBPP/2"]


def test_duplicate_task_ids_are_an_error_unless_allowed(tmp_path):
    path = write_json(tmp_path / "d.json", [row(task_id="x"), row(task_id="y"), row(task_id="x")])
    with pytest.raises(ProblemFormatError, match=r"row 2 \(0-based index\), field 'task_id': "
                                                 r"duplicate task_id 'x' \(first seen at .*row 0"):
        load_problems(path)
    assert len(load_problems(path, allow_duplicate_ids=True)) == 3


def test_load_jsonl_reports_line_numbers(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [json.dumps(row(task_id=_DROP)), "", json.dumps(row(task_id=_DROP))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    got = load_problems(path)
    assert [p.task_id for p in got] == ["p/0", "p/1"]  # blank lines are not rows

    bad = row()
    bad["test_input"] = ["1\n", 2]
    path.write_text("\n".join([json.dumps(row()), "", json.dumps(bad)]) + "\n")
    with pytest.raises(ProblemFormatError) as e:
        load_problems(path)
    assert e.value.line == 3 and e.value.row is None
    assert str(e.value).startswith(f"{path}, line 3, field 'test_input': item 1")

    path.write_text(json.dumps(row()) + "\n{not json\n")
    with pytest.raises(ProblemFormatError, match=r"line 2: invalid JSON"):
        load_problems(path)


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n{"question": "q",\n oops}\n]\n')
    with pytest.raises(ProblemFormatError, match=r"broken.json, line 3: invalid JSON"):
        load_problems(path)


@pytest.mark.parametrize("payload,why", [({"question": "q"}, "got dict"), ("text", "got str"),
                                         (None, "got null")])
def test_top_level_must_be_a_list(tmp_path, payload, why):
    path = write_json(tmp_path / "x.json", payload)
    with pytest.raises(ProblemFormatError, match=f"expected a JSON list of problem objects, {why}"):
        load_problems(path)


def test_load_directory_in_sorted_order(tmp_path):
    write_json(tmp_path / "b.json", [row(task_id=_DROP)])
    (tmp_path / "a.jsonl").write_text(json.dumps(row(task_id=_DROP)) + "\n")
    (tmp_path / "notes.txt").write_text("ignored: not a problem file")
    (tmp_path / ".b.json.123.part").write_text("[")  # hidden partial download: ignored
    got = load_problems(tmp_path)
    assert [p.task_id for p in got] == ["a/0", "b/0"]


def test_directory_duplicate_ids_across_files(tmp_path):
    write_json(tmp_path / "a.json", [row(task_id="same")])
    write_json(tmp_path / "b.json", [row(task_id="same")])
    with pytest.raises(ProblemFormatError, match="duplicate task_id 'same'"):
        load_problems(tmp_path)


def test_loader_errors_for_missing_paths_and_bad_suffixes(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_problems(tmp_path / "nope.json")
    with pytest.raises(ProblemFormatError, match="holds no .json or .jsonl"):
        load_problems(tmp_path)
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(ProblemFormatError, match="unknown problem file type '.csv'"):
        load_problems(tmp_path / "d.csv")


def test_load_problems_file_overrides(tmp_path):
    path = write_json(tmp_path / ".tmp-download.part", [row(task_id=_DROP, question=5)])
    with pytest.raises(ProblemFormatError) as e:
        load_problems_file(path, fmt="json", source="hub:x.json", dataset="X")
    assert str(e.value).startswith("hub:x.json, row 0 (0-based index), field 'question'")


def test_write_problems_is_atomic_and_round_trips(tmp_path):
    ps = [Problem(f"t{i}", f"q{i}", ("1\n",), (str(i),), dataset="d") for i in range(3)]
    dest = tmp_path / "out.json"
    write_problems(ps, dest)
    assert load_problems(dest) == ps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
