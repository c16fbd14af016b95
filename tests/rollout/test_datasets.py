"""The one data-spec parser (rollout.datasets): embedded splits, files and directories, hub
names read from data_dir (downloaded there once when missing), for cure-eval's ``dataset`` and
cure-train's ``data.train`` / ``data.eval`` alike."""
from __future__ import annotations

import socket

import pytest

from rollout import hub
from rollout.datasets import DatasetError, resolve_datasets, spec_problems
from rollout.eval_settings import EvalError
from rollout.problems import embedded_problems, write_problems
from tests.rollout.test_evaluate import PROBLEMS


def test_datasets_resolve_embedded_paths_and_names(tmp_path):
    write_problems(PROBLEMS, tmp_path / "mine.json")
    got = resolve_datasets(f"embedded:eval, {tmp_path / 'mine.json'}", max_problems=2)
    assert list(got) == ["embedded-eval", "mine"] and len(got["mine"]) == 2
    with pytest.raises(EvalError, match="cure-data download --dataset=LiveBench"):
        resolve_datasets("livebench", data_dir=tmp_path, download=False)
    with pytest.raises(EvalError, match="'nope' is not a file"):
        resolve_datasets("nope")
    with pytest.raises(DatasetError, match="listed twice"):
        resolve_datasets("embedded:eval,embedded-eval")
    with pytest.raises(DatasetError, match="^dataset: empty"):
        resolve_datasets(" , ")


def test_a_hub_dataset_is_downloaded_once_into_data_dir(tmp_path, monkeypatch):
    calls = []

    def fake_download(name, out_dir):
        calls.append(name)
        if name != "MBPP":
            raise hub.HubUnreachableError("cannot reach the hub (offline)")
        path = tmp_path / "data" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_problems(PROBLEMS, path)
        return hub.DownloadResult(path, len(PROBLEMS), hub.HubFile("Gen-Verse/MBPP", "x"), name)

    monkeypatch.setattr(hub, "download_dataset", fake_download)
    got = resolve_datasets("mbpp-ReasonFlux", data_dir=tmp_path / "data")
    assert list(got) == ["MBPP"] and len(got["MBPP"]) == 3
    resolve_datasets("MBPP", data_dir=tmp_path / "data")  # found on disk now
    assert calls == ["MBPP"]
    with pytest.raises(EvalError, match=r"^dataset LiveBench: cannot reach the hub"):
        resolve_datasets("LiveBench", data_dir=tmp_path / "data")


def test_data_train_hub_name_reads_the_local_copy_without_network(tmp_path, monkeypatch):
    """cure-train's rollout server resolves data.train / data.eval with spec_problems and
    data.data_dir: a hub name whose file is in data_dir is read from there, nothing is fetched."""
    def no_download(name, out_dir):
        raise AssertionError(f"tried to download {name}")

    def no_network(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(hub, "download_dataset", no_download)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    (tmp_path / "data").mkdir()
    write_problems(PROBLEMS, tmp_path / "data" / "LiveBench.json")
    got = spec_problems("LiveBench", data_dir=tmp_path / "data")
    assert [p.task_id for p in got] == [p.task_id for p in PROBLEMS]
    assert spec_problems("livebench", data_dir=tmp_path / "data") == got  # names are case-blind
    # several items: one list, in the given order
    both = spec_problems(f"embedded:eval,{tmp_path / 'data' / 'LiveBench.json'}")
    assert both == embedded_problems("eval") + got
    with pytest.raises(DatasetError, match="LiveBench.json not found"):
        spec_problems("LiveBench", data_dir=tmp_path / "elsewhere", download=False)
