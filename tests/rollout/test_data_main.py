"""The ``cure-data`` command line, run as a real process: download from a hub-shaped
directory, list, validate, and one-line errors (never a traceback): exit code 2 for a bad command
line, 1 when the download or the validation fails."""
from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from rollout import data_main, hub

REPO = pathlib.Path(__file__).resolve().parents[2]


def cure_data(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "rollout.data_main", *args], cwd=REPO,
                          env=full_env, capture_output=True, text=True, timeout=120, check=False)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cure-data: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def make_mirror(root: pathlib.Path, rows: int = 3) -> pathlib.Path:
    path = root / "Gen-Verse" / "LiveBench" / "test" / "LiveBench.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([{"question": f"q{i}", "test_input": ["1\n"], "test_output": ["1"],
                                 "example_input": [], "example_output": []}
                                for i in range(rows)]))
    return path


def test_console_script_points_at_run():
    (ep,) = [e for e in importlib.metadata.entry_points(group="console_scripts")
             if e.name == "cure-data"]
    assert ep.value == "rollout.data_main:run"
    assert ep.load() is data_main.run


def test_download_from_hub_dir(tmp_path):
    make_mirror(tmp_path / "mirror", rows=4)
    out = tmp_path / "data"
    proc = cure_data("download", "--dataset", "livebench", "--out", str(out),
                     "--hub_dir", str(tmp_path / "mirror"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"wrote {out / 'LiveBench.json'}: 4 problems (LiveBench, from "
                                   "Gen-Verse/LiveBench:test/LiveBench.json)")
    assert len(json.loads((out / "LiveBench.json").read_text())) == 4


def test_download_offline_is_one_line_and_exit_1(tmp_path):
    proc = cure_data("download", "--dataset=LiveBench", f"--out={tmp_path / 'data'}",
                     env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert_one_line_error(proc, "cannot download dataset LiveBench", "HF_HUB_OFFLINE",
                          "tried: Gen-Verse/LiveBench-ReasonFlux:test/LiveBench-ReasonFlux.json",
                          code=1)
    assert not (tmp_path / "data").exists()


def test_download_unreachable_hub_is_one_line_and_exit_1(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = cure_data("download", "--dataset=MBPP", f"--out={tmp_path / 'data'}",
                     env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}",
                          "HF_HOME": str(tmp_path / "hf")})
    assert_one_line_error(proc, f"cannot reach the Hugging Face hub at http://127.0.0.1:{port}",
                          "--hub_dir", code=1)


@pytest.mark.parametrize("args,fragments", [
    (["download", "--dataset=HumanEval", "--out=x"], ["unknown dataset 'HumanEval'; known: "]),
    (["download", "--out=x"], ["download needs --dataset=NAME"]),
    (["download", "--dataset=MBPP"], ["download needs --out=DIR"]),
    (["--bogus_flag=1", "list"], ["Unknown command line flag 'bogus_flag'", "usage: cure-data"]),
    ([], ["missing command", "usage: cure-data"]),
    (["upload"], ["unknown command 'upload'"]),
    (["list", "extra"], ["unexpected arguments 'extra'"]),
    (["validate"], ["validate needs exactly one PATH"]),
    (["download", "--dataset=MBPP", "--out=x", "--hub_dir=.", "--revision=v1"],
     ["a revision applies to the hub, not to a local mirror"]),
])
def test_usage_errors(args, fragments):
    assert_one_line_error(cure_data(*args), *fragments)


def test_download_from_a_mirror_without_the_dataset(tmp_path):
    (tmp_path / "mirror").mkdir()
    proc = cure_data("download", "--dataset=CodeForces", f"--out={tmp_path}",
                     f"--hub_dir={tmp_path / 'mirror'}")
    line = assert_one_line_error(proc, "dataset CodeForces not found on the local mirror", code=1)
    assert line.count("Gen-Verse/CodeForces") == 4


def test_list_names_every_dataset_and_the_embedded_splits():
    proc = cure_data("list")
    assert proc.returncode == 0, proc.stderr
    for info in hub.DATASETS.values():
        assert f"  {info.name} " in proc.stdout
    assert "embedded:train" in proc.stdout and "embedded:eval" in proc.stdout


def test_validate_good_and_bad_files(tmp_path):
    good = make_mirror(tmp_path / "m", rows=2)
    proc = cure_data("validate", str(good))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{good}: 2 problems, 2 private tests, all valid"

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q", "test_input": ["1\n"], "test_output": ["1"]},
                               {"question": "q", "test_input": ["1\n"], "test_output": [1]}]))
    assert_one_line_error(cure_data("validate", str(bad)),
                          f"{bad}, row 1 (0-based index), field 'test_output': item 0 must be "
                          "a string, got int", code=1)
    assert_one_line_error(cure_data("validate", str(tmp_path / "missing.json")), "missing.json")


def test_dispatch_in_process(tmp_path):
    """The same commands without a process boundary (flags passed as a FlagValues)."""
    from absl import flags
    fv = flags.FlagValues()
    data_main._define_flags(fv)
    make_mirror(tmp_path / "m", rows=2)
    fv(["cure-data", "--dataset=LiveBench", f"--out={tmp_path / 'o'}", f"--hub_dir={tmp_path / 'm'}"])
    assert data_main.dispatch(["download"], fv).startswith(
        f"wrote {tmp_path / 'o' / 'LiveBench.json'}: 2 problems")
    with pytest.raises(data_main.UsageError, match="unknown command 'x'"):
        data_main.dispatch(["x"], fv)
