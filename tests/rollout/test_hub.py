"""Dataset name resolution and download (rollout.hub): against a local hub-shaped mirror,
through the real huggingface_hub client talking to a fake hub on loopback, and the
offline / unreachable error paths."""
from __future__ import annotations

import hashlib
import http.server
import json
import pathlib
import socket
import subprocess
import sys
import threading

import pytest

from rollout import hub
from rollout.problems import load_problems


def good_rows(n: int, dataset: str = "LiveBench") -> list[dict]:
    return [{"question": f"Print {i}.", "test_time_limit": 1, "example_input": ["\n"],
             "example_output": [str(i)], "test_input": ["\n", "x\n"],
             "test_output": [str(i), str(i)], "task_id": f"{dataset}-{i}"} for i in range(n)]


def mirror_file(root: pathlib.Path, repo_id: str, filename: str, payload) -> pathlib.Path:
    path = root / repo_id / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def listing(d: pathlib.Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# -- name resolution -------------------------------------------------------------------------


@pytest.mark.parametrize("name,canonical,split", [
    ("LiveBench", "LiveBench", "test"), ("livebench", "LiveBench", "test"),
    ("LIVECODEBENCH", "LiveCodeBench", "test"), ("mbpp", "MBPP", "test"),
    ("codecontests_train", "CodeContests_train", "train"), ("CodeContests", "CodeContests", "test"),
    ("codeforces", "CodeForces", "test"), ("LiveBench-ReasonFlux", "LiveBench", "test"),
    (" MBPP-reasonflux ", "MBPP", "test"),
])
def test_resolve_is_case_insensitive_and_accepts_the_suffix(name, canonical, split):
    info = hub.resolve_dataset(name)
    assert (info.name, info.split) == (canonical, split)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(hub.UnknownDatasetError) as e:
        hub.resolve_dataset("HumanEval")
    assert str(e.value) == ("unknown dataset 'HumanEval'; known: CodeContests_train, CodeContests, "
                            "CodeForces, MBPP, LiveBench, LiveCodeBench")


def test_candidates_cover_plain_and_suffixed_names():
    assert [str(c) for c in hub.candidate_files("CodeContests_train")] == [
        "Gen-Verse/CodeContests_train:train/CodeContests_train.json",
        "Gen-Verse/CodeContests_train:train/CodeContests_train-ReasonFlux.json",
        "Gen-Verse/CodeContests_train-ReasonFlux:train/CodeContests_train-ReasonFlux.json",
        "Gen-Verse/CodeContests_train-ReasonFlux:train/CodeContests_train.json",
    ]
    # The public docs name LiveBench with the suffix: those candidates come first.
    assert [str(c) for c in hub.candidate_files("livebench")] == [
        "Gen-Verse/LiveBench-ReasonFlux:test/LiveBench-ReasonFlux.json",
        "Gen-Verse/LiveBench-ReasonFlux:test/LiveBench.json",
        "Gen-Verse/LiveBench:test/LiveBench.json",
        "Gen-Verse/LiveBench:test/LiveBench-ReasonFlux.json",
    ]
    for info in hub.DATASETS.values():
        cands = hub.candidate_files(info.name)
        assert len(set(cands)) == 4
        assert all(c.repo_id.startswith("Gen-Verse/") for c in cands)
        assert all(c.filename.startswith(f"{info.split}/") for c in cands)


# -- local mirror ----------------------------------------------------------------------------


def test_download_from_a_local_hub_shaped_directory(tmp_path):
    mirror = tmp_path / "mirror"
    src = mirror_file(mirror, "Gen-Verse/LiveBench", "test/LiveBench.json", good_rows(7))
    out = tmp_path / "data" / "nested"
    result = hub.download_dataset("livebench", out, hub_dir=mirror)
    assert result.path == out / "LiveBench.json"
    assert result.num_problems == 7 and result.dataset == "LiveBench"
    assert str(result.source) == "Gen-Verse/LiveBench:test/LiveBench.json"
    assert result.path.read_bytes() == src.read_bytes()
    assert listing(out) == ["LiveBench.json"]  # no temporary file left behind
    assert [p.task_id for p in load_problems(result.path)] == [f"LiveBench-{i}" for i in range(7)]


def test_first_existing_candidate_wins(tmp_path):
    mirror = tmp_path / "m"
    mirror_file(mirror, "Gen-Verse/MBPP", "test/MBPP.json", good_rows(2, "plain"))
    mirror_file(mirror, "Gen-Verse/MBPP-ReasonFlux", "test/MBPP-ReasonFlux.json",
                good_rows(3, "flux"))
    result = hub.download_dataset("MBPP", tmp_path / "out", hub_dir=mirror)
    assert str(result.source) == "Gen-Verse/MBPP-ReasonFlux:test/MBPP-ReasonFlux.json"
    assert result.num_problems == 3


def test_nothing_found_lists_every_candidate_tried(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(hub.DatasetDownloadError) as e:
        hub.download_dataset("CodeForces", tmp_path / "out", hub_dir=tmp_path / "m")
    msg = str(e.value)
    assert msg.startswith(f"dataset CodeForces not found on the local mirror {tmp_path / 'm'}; tried: ")
    for c in hub.candidate_files("CodeForces"):
        assert str(c) in msg
    assert not (tmp_path / "out").exists()


def test_missing_mirror_directory_is_an_error(tmp_path):
    with pytest.raises(hub.HubUnreachableError, match="local hub mirror .* is not a directory"):
        hub.download_dataset("MBPP", tmp_path / "out", hub_dir=tmp_path / "nope")


@pytest.mark.parametrize("payload,why", [
    ("[{\"question\": \"q\"", "invalid JSON"),
    ([{"question": "q", "test_input": ["1\n"], "test_output": ["1", "2"]}],
     "row 0 (0-based index), field 'test_output'"),
    ({"not": "a list"}, "expected a JSON list"),
])
def test_malformed_download_is_an_error_and_leaves_no_file(tmp_path, payload, why):
    mirror = tmp_path / "m"
    mirror_file(mirror, "Gen-Verse/CodeContests", "test/CodeContests.json", payload)
    out = tmp_path / "out"
    with pytest.raises(hub.DatasetDownloadError) as e:
        hub.download_dataset("CodeContests", out, hub_dir=mirror)
    assert "downloaded file is malformed" in str(e.value) and why in str(e.value)
    assert "Gen-Verse/CodeContests:test/CodeContests.json" in str(e.value)
    assert listing(out) == []


def test_failed_download_keeps_the_previous_good_file(tmp_path):
    mirror = tmp_path / "m"
    out = tmp_path / "out"
    mirror_file(mirror, "Gen-Verse/CodeForces", "test/CodeForces.json", good_rows(4))
    first = hub.download_dataset("CodeForces", out, hub_dir=mirror)
    before = first.path.read_bytes()
    mirror_file(mirror, "Gen-Verse/CodeForces", "test/CodeForces.json", "[")
    with pytest.raises(hub.DatasetDownloadError):
        hub.download_dataset("CodeForces", out, hub_dir=mirror)
    assert first.path.read_bytes() == before
    assert listing(out) == ["CodeForces.json"]


# -- the real huggingface_hub client against a fake hub on loopback --------------------------


class FakeHub:
    """Serves ``/datasets/<owner>/<repo>/resolve/<rev>/<file>`` like the hub: 404 with the
    hub's X-Error-Code for a missing repo or file, else the bytes with commit/etag headers."""

    def __init__(self, files: dict[tuple[str, str], bytes]):
        self.files = files
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _serve(self, body: bool) -> None:
                fake.requests.append((self.command, self.path))
                parts = self.path.split("?")[0].split("/")
                # ['', 'datasets', owner, repo, 'resolve', rev, *file]
                repo_id, filename = "/".join(parts[2:4]), "/".join(parts[6:])
                repos = {r for r, _ in fake.files}
                data = fake.files.get((repo_id, filename))
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code",
                                     "EntryNotFound" if repo_id in repos else "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
                self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def online(monkeypatch):
    """conftest makes the whole suite offline; these tests talk to loopback only."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_real_client_resolves_names_against_a_fake_hub(tmp_path, online):
    data = json.dumps(good_rows(5)).encode()
    with FakeHub({("Gen-Verse/LiveBench", "test/LiveBench.json"): data}) as fake:
        fetch = hub.hub_fetcher(endpoint=fake.endpoint, cache_dir=str(tmp_path / "cache"))
        result = hub.download_dataset("LiveBench", tmp_path / "out", fetcher=fetch)
        asked = [path for method, path in fake.requests if method == "HEAD"]
    assert result.num_problems == 5
    assert result.path.read_bytes() == data
    assert str(result.source) == "Gen-Verse/LiveBench:test/LiveBench.json"
    # Both suffixed candidates were asked for first (repo missing), then the plain one.
    assert [p.split("/resolve/")[0] for p in asked] == [
        "/datasets/Gen-Verse/LiveBench-ReasonFlux", "/datasets/Gen-Verse/LiveBench-ReasonFlux",
        "/datasets/Gen-Verse/LiveBench"]
    assert asked[-1].endswith("/test/LiveBench.json")


def test_real_client_reports_every_candidate_when_the_hub_lacks_the_dataset(tmp_path, online):
    with FakeHub({("Gen-Verse/MBPP", "test/other.json"): b"[]"}) as fake:
        fetch = hub.hub_fetcher(endpoint=fake.endpoint, cache_dir=str(tmp_path / "cache"))
        with pytest.raises(hub.DatasetDownloadError) as e:
            hub.download_dataset("mbpp", tmp_path / "out", fetcher=fetch)
    assert "dataset MBPP not found on the Hugging Face hub; tried: " in str(e.value)
    assert all(str(c) in str(e.value) for c in hub.candidate_files("MBPP"))
    assert not isinstance(e.value, hub.HubUnreachableError)


def test_real_client_asks_for_the_requested_revision(tmp_path, online):
    data = json.dumps(good_rows(1)).encode()
    with FakeHub({("Gen-Verse/CodeForces", "test/CodeForces.json"): data}) as fake:
        fetch = hub.hub_fetcher(endpoint=fake.endpoint, revision="v1.0",
                                cache_dir=str(tmp_path / "cache"))
        hub.download_dataset("CodeForces", tmp_path / "out", fetcher=fetch)
        paths = [path for _, path in fake.requests]
    assert paths and all("/resolve/v1.0/" in path for path in paths)


def test_revision_with_a_local_mirror_is_an_error(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(hub.DatasetDownloadError, match="a revision applies to the hub"):
        hub.download_dataset("MBPP", tmp_path / "out", hub_dir=tmp_path / "m", revision="v1")


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return port


def test_unreachable_hub_fails_fast_with_one_line(tmp_path, online):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    fetch = hub.hub_fetcher(endpoint=endpoint, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(hub.HubUnreachableError) as e:
        hub.download_dataset("LiveBench", tmp_path / "out", fetcher=fetch)
    msg = str(e.value)
    assert msg.startswith(f"cannot reach the Hugging Face hub at {endpoint} (")
    assert "refused" in msg.lower() and "--hub_dir" in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()


def test_offline_mode_through_the_real_client(tmp_path):
    from huggingface_hub import constants
    assert constants.HF_HUB_OFFLINE, "conftest sets HF_HUB_OFFLINE=1 before imports"
    fetch = hub.hub_fetcher(cache_dir=str(tmp_path / "empty-cache"))
    with pytest.raises(hub.HubUnreachableError) as e:
        hub.download_dataset("CodeContests_train", tmp_path / "out", fetcher=fetch)
    msg = str(e.value)
    assert msg.startswith("cannot download dataset CodeContests_train: HF_HUB_OFFLINE is set and "
                          "the file is not in the local cache; tried: ")
    assert all(str(c) in msg for c in hub.candidate_files("CodeContests_train"))


def test_offline_mode_serves_a_cached_file(tmp_path, monkeypatch):
    """A file fetched once is in the HF cache and downloads again with HF_HUB_OFFLINE=1."""
    from huggingface_hub import constants
    data = json.dumps(good_rows(3)).encode()
    cache = str(tmp_path / "cache")
    with FakeHub({("Gen-Verse/LiveBench", "test/LiveBench.json"): data}) as fake:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        hub.download_dataset("LiveBench", tmp_path / "a",
                             fetcher=hub.hub_fetcher(endpoint=fake.endpoint, cache_dir=cache))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        n_requests = len(fake.requests)
        result = hub.download_dataset(
            "LiveBench", tmp_path / "b",
            fetcher=hub.hub_fetcher(endpoint=fake.endpoint, cache_dir=cache))
        assert len(fake.requests) == n_requests  # served from the cache, no network
    assert result.path.read_bytes() == data


# -- stubbed transport -----------------------------------------------------------------------


def test_stubbed_transport_connection_error_is_fatal_after_one_try(tmp_path):
    calls = []

    def refuse(**kwargs):
        calls.append((kwargs["repo_id"], kwargs["filename"], kwargs["repo_type"]))
        raise ConnectionRefusedError(111, "Connection refused")

    fetch = hub.hub_fetcher(download=refuse, endpoint="https://hub.invalid")
    with pytest.raises(hub.HubUnreachableError,
                       match=r"^cannot reach the Hugging Face hub at https://hub.invalid "
                             r"\(ConnectionRefusedError: \[Errno 111\] Connection refused\)$"):
        hub.download_dataset("CodeContests", tmp_path / "out", fetcher=fetch)
    assert calls == [("Gen-Verse/CodeContests", "test/CodeContests.json", "dataset")]


def test_stubbed_transport_uncached_and_unreachable_tries_every_candidate(tmp_path):
    from huggingface_hub import errors
    calls = []

    def no_network(**kwargs):
        calls.append(f"{kwargs['repo_id']}:{kwargs['filename']}")
        try:
            raise OSError("[Errno 101] Network is unreachable")
        except OSError as cause:
            raise errors.LocalEntryNotFoundError("cannot find the requested files") from cause

    fetch = hub.hub_fetcher(download=no_network, endpoint="https://hub.invalid")
    with pytest.raises(hub.HubUnreachableError) as e:
        hub.download_dataset("CodeForces", tmp_path / "out", fetcher=fetch)
    assert calls == [str(c) for c in hub.candidate_files("CodeForces")]
    assert ("cannot reach the Hugging Face hub at https://hub.invalid (OSError: [Errno 101] "
            "Network is unreachable)") in str(e.value)


def test_stubbed_transport_succeeds_on_a_later_candidate(tmp_path):
    from huggingface_hub import errors
    src = tmp_path / "cached.json"
    src.write_text(json.dumps(good_rows(2)))

    def fake_download(**kwargs):
        if kwargs["repo_id"] == "Gen-Verse/CodeContests-ReasonFlux":
            return str(src)
        raise errors.EntryNotFoundError(f"404: {kwargs['filename']}")

    result = hub.download_dataset("codecontests", tmp_path / "out",
                                  fetcher=hub.hub_fetcher(download=fake_download))
    assert str(result.source) == "Gen-Verse/CodeContests-ReasonFlux:test/CodeContests-ReasonFlux.json"
    assert result.num_problems == 2


def test_importing_the_data_modules_stays_light():
    code = ("import sys, rollout.problems, rollout.hub, rollout.data_main, rollout.paper_problems; "
            "heavy = [m for m in ('huggingface_hub', 'jax', 'torch', 'vllm', 'httpx') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=pathlib.Path(__file__).resolve().parents[2], timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
