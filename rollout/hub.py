"""Download CURE's datasets from the Hugging Face hub (or a local mirror laid out like it).

The datasets live in repos owned by ``Gen-Verse``, one JSON file each at
``train/<name>.json`` (the training set) or ``test/<name>.json``. The public download
script and the repo names disagree for some datasets (some repos and files carry a
``-ReasonFlux`` suffix), so a name resolves to an ordered list of candidate
(repo, file) pairs; the first one that exists wins, and when none does the error lists
every candidate tried.

``huggingface_hub`` is imported lazily inside :func:`hub_fetcher` only: the rest of this
module is stdlib, so the learner side may import it.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import socket
import urllib.parse
from collections.abc import Callable

from rollout.problems import ProblemFormatError, load_problems_file

__all__ = [
    "DATASETS",
    "HUB_OWNER",
    "CandidateNotFound",
    "CandidateUnavailable",
    "DatasetDownloadError",
    "DatasetInfo",
    "DownloadResult",
    "HubFile",
    "HubUnreachableError",
    "UnknownDatasetError",
    "candidate_files",
    "download_dataset",
    "hub_fetcher",
    "local_fetcher",
    "resolve_dataset",
]

HUB_OWNER = "Gen-Verse"
REASONFLUX_SUFFIX = "-ReasonFlux"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """A dataset CURE uses: its canonical name, hub split folder and role."""

    name: str
    split: str  # "train" or "test": the folder inside the repo
    description: str
    # Whether the public instructions name this dataset with the "-ReasonFlux" suffix; such
    # datasets try the suffixed candidates first.
    suffixed_first: bool = False


DATASETS: dict[str, DatasetInfo] = {
    d.name.lower(): d
    for d in (
        DatasetInfo("CodeContests_train", "train", "training set (4.53k problems)"),
        DatasetInfo("CodeContests", "test", "evaluation, 239 problems"),
        DatasetInfo("CodeForces", "test", "evaluation, 467 problems"),
        DatasetInfo("MBPP", "test", "evaluation, 221 problems", suffixed_first=True),
        DatasetInfo("LiveBench", "test", "evaluation, 128 problems", suffixed_first=True),
        DatasetInfo("LiveCodeBench", "test", "evaluation, time limit 8 s",
                    suffixed_first=True),
    )
}


class DatasetDownloadError(RuntimeError):
    """A dataset could not be downloaded; ``str(err)`` is one line for the user."""


class UnknownDatasetError(DatasetDownloadError, ValueError):
    """The requested name is not one of :data:`DATASETS`."""


class HubUnreachableError(DatasetDownloadError):
    """The hub (or mirror) could not be contacted at all: no point trying other names."""


class CandidateNotFound(Exception):
    """Raised by a fetcher when one candidate (repo, file) does not exist."""


class CandidateUnavailable(Exception):
    """Raised by a fetcher when one candidate could not be asked for (offline, not cached).

    Other candidates are still tried (they may be cached); if none is found the download
    fails with :class:`HubUnreachableError`.
    """


@dataclasses.dataclass(frozen=True)
class HubFile:
    """One candidate location: a dataset repo id and a file path inside it."""

    repo_id: str
    filename: str

    def __str__(self) -> str:
        return f"{self.repo_id}:{self.filename}"


@dataclasses.dataclass(frozen=True)
class DownloadResult:
    """Where a download landed, how many problems it holds, and which candidate served it."""

    path: pathlib.Path
    num_problems: int
    source: HubFile
    dataset: str


# A fetcher maps one candidate to a local file path. It raises CandidateNotFound when the candidate
# does not exist, CandidateUnavailable when it cannot be asked for (the next candidate is tried),
# and HubUnreachableError when the source cannot be contacted at all (fatal).
Fetcher = Callable[[HubFile], str]


def resolve_dataset(name: str) -> DatasetInfo:
    """Case-insensitive lookup; a trailing "-ReasonFlux" (as in the public docs) is accepted."""
    key = name.strip().lower()
    if key.endswith(REASONFLUX_SUFFIX.lower()):
        key = key[: -len(REASONFLUX_SUFFIX)]
    try:
        return DATASETS[key]
    except KeyError:
        known = ", ".join(d.name for d in DATASETS.values())
        raise UnknownDatasetError(f"unknown dataset {name!r}; known: {known}") from None


def candidate_files(name: str) -> list[HubFile]:
    """The (repo, file) pairs to try for ``name``, most likely first."""
    info = resolve_dataset(name)
    base, split, sfx = info.name, info.split, REASONFLUX_SUFFIX
    plain = [HubFile(f"{HUB_OWNER}/{base}", f"{split}/{base}.json"),
             HubFile(f"{HUB_OWNER}/{base}", f"{split}/{base}{sfx}.json")]
    suffixed = [HubFile(f"{HUB_OWNER}/{base}{sfx}", f"{split}/{base}{sfx}.json"),
                HubFile(f"{HUB_OWNER}/{base}{sfx}", f"{split}/{base}.json")]
    return suffixed + plain if info.suffixed_first else plain + suffixed


# -- fetchers ----------------------------------------------------------------------------


def local_fetcher(hub_dir: str | os.PathLike[str]) -> Fetcher:
    """Read candidates from a local mirror laid out like the hub: ``<hub_dir>/<repo_id>/<file>``.

    E.g. ``mirror/Gen-Verse/LiveBench/test/LiveBench.json``. Useful for air-gapped machines
    (copy the files once) and for tests.
    """
    root = pathlib.Path(hub_dir)
    if not root.is_dir():
        raise HubUnreachableError(f"local hub mirror {root} is not a directory")

    def fetch(candidate: HubFile) -> str:
        path = root / candidate.repo_id / candidate.filename
        if not path.is_file():
            raise CandidateNotFound(str(path))
        return str(path)

    return fetch


def _proxy_configured() -> bool:
    return any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
                                           "http_proxy", "ALL_PROXY", "all_proxy"))


def _probe(endpoint: str, timeout_s: float) -> None:
    """Fail fast when the endpoint's host does not accept TCP connections.

    huggingface_hub retries a refused connection with backoff for ~20 s before giving up;
    a direct probe turns "no network" into an immediate, clear error. Skipped behind a
    proxy (the direct route may legitimately be closed there).
    """
    if _proxy_configured():
        return
    url = urllib.parse.urlsplit(endpoint)
    if not url.hostname:
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise HubUnreachableError(
            f"cannot reach the Hugging Face hub at {endpoint} ({e.strerror or e}); check the "
            "network or HF_ENDPOINT, or use a local mirror (--hub_dir)") from None


def hub_fetcher(*, endpoint: str | None = None, revision: str | None = None,
                cache_dir: str | None = None, token: str | bool | None = None,
                probe_timeout_s: float = 10.0,
                download: Callable[..., str] | None = None) -> Fetcher:
    """Fetch candidates through ``huggingface_hub.hf_hub_download`` (imported lazily).

    ``download`` replaces ``hf_hub_download`` (same keyword arguments), e.g. to stub the
    transport in tests; ``endpoint`` defaults to ``HF_ENDPOINT`` / huggingface.co. Files
    already in the Hugging Face cache are served even offline (``HF_HUB_OFFLINE=1``).
    """
    import huggingface_hub
    from huggingface_hub import constants, errors

    do_download = download or huggingface_hub.hf_hub_download
    endpoint = endpoint or constants.ENDPOINT
    probed = False

    def offline() -> bool:
        is_offline = getattr(constants, "is_offline_mode", None)
        return bool(is_offline() if is_offline is not None else constants.HF_HUB_OFFLINE)

    def fetch(candidate: HubFile) -> str:
        nonlocal probed
        if not probed and download is None and not offline():
            _probe(endpoint, probe_timeout_s)
            probed = True
        try:
            return do_download(repo_id=candidate.repo_id, filename=candidate.filename,
                               repo_type="dataset", revision=revision, endpoint=endpoint,
                               cache_dir=cache_dir, token=token)
        except errors.LocalEntryNotFoundError as e:
            # The hub could not be asked (offline mode or no connection) and the file is not
            # cached. It subclasses EntryNotFoundError, so it is caught before "not found".
            # Another candidate may still be cached, so this is not fatal yet.
            cause = e.__cause__ or e.__context__
            if isinstance(cause, errors.OfflineModeIsEnabled) or (cause is None and offline()):
                raise CandidateUnavailable("HF_HUB_OFFLINE is set and the file is not in the local "
                                   "cache") from None
            why = f"{type(cause).__name__}: {_first_line(cause)}" if cause else _first_line(e)
            raise CandidateUnavailable(f"cannot reach the Hugging Face hub at {endpoint} ({why})"
                               ) from None
        except errors.GatedRepoError as e:
            raise DatasetDownloadError(f"{candidate.repo_id} is gated: accept its terms on "
                                       f"the hub and log in ({_first_line(e)})") from None
        except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError,
                errors.EntryNotFoundError) as e:
            raise CandidateNotFound(_first_line(e)) from None
        except errors.OfflineModeIsEnabled:
            raise CandidateUnavailable("HF_HUB_OFFLINE is set and the file is not in the local cache"
                               ) from None
        except errors.HfHubHTTPError as e:
            raise DatasetDownloadError(f"hub error for {candidate}: {_first_line(e)}") from None
        except (ConnectionError, TimeoutError, socket.gaierror) as e:
            raise HubUnreachableError(f"cannot reach the Hugging Face hub at {endpoint} "
                                      f"({type(e).__name__}: {_first_line(e)})") from None
        except Exception as e:  # httpx transport errors, without importing httpx here
            if type(e).__name__ in _TRANSPORT_ERRORS:
                raise HubUnreachableError(f"cannot reach the Hugging Face hub at {endpoint} "
                                          f"({type(e).__name__}: {_first_line(e)})") from None
            raise

    return fetch


_TRANSPORT_ERRORS = frozenset({"ConnectError", "ConnectTimeout", "ReadTimeout", "ReadError",
                               "NetworkError", "ProxyError", "TimeoutException",
                               "RemoteProtocolError"})


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# -- download ----------------------------------------------------------------------------


def download_dataset(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    hub_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    fetcher: Fetcher | None = None,
) -> DownloadResult:
    """Fetch dataset ``name`` into ``out_dir/<Name>.json``, validated and written atomically.

    The source is ``fetcher`` if given, else the local mirror ``hub_dir`` if given, else the
    Hugging Face hub (at ``revision``, a branch, tag or commit; default main). Candidates from :func:`candidate_files` are tried in order. The file
    is copied to a temporary name in ``out_dir``, validated with the problem loader, and
    only then renamed into place (``os.replace``), so ``out_dir/<Name>.json`` is either the
    complete, valid dataset or untouched; a malformed download raises and leaves nothing.
    """
    info = resolve_dataset(name)
    candidates = candidate_files(info.name)
    where = f"local mirror {hub_dir}" if hub_dir is not None else "Hugging Face hub"
    if hub_dir is not None and revision is not None:
        raise DatasetDownloadError("a revision applies to the hub, not to a local mirror "
                                   "(--hub_dir holds one version)")
    if fetcher is None:
        fetcher = (local_fetcher(hub_dir) if hub_dir is not None
                   else hub_fetcher(revision=revision))

    tried: list[str] = []
    unavailable: list[str] = []
    local_path: str | None = None
    served_by: HubFile | None = None
    for candidate in candidates:
        try:
            local_path = fetcher(candidate)
        except CandidateNotFound:
            tried.append(str(candidate))
            continue
        except CandidateUnavailable as e:
            tried.append(str(candidate))
            unavailable.append(str(e))
            continue
        served_by = candidate
        break
    if local_path is None or served_by is None:
        if unavailable:
            reasons = "; ".join(dict.fromkeys(unavailable))  # unique, in order
            raise HubUnreachableError(
                f"cannot download dataset {info.name}: {reasons}; tried: {', '.join(tried)}; "
                "use a local mirror (--hub_dir) or check the network / HF_ENDPOINT")
        raise DatasetDownloadError(
            f"dataset {info.name} not found on the {where}; tried: {', '.join(tried)}")

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / f"{info.name}.json"
    tmp = out / f".{info.name}.json.{os.getpid()}.part"
    try:
        shutil.copyfile(local_path, tmp)
        try:
            problems = load_problems_file(tmp, fmt="json", source=f"{served_by} (for {dest})",
                                          dataset=info.name)
        except ProblemFormatError as e:
            raise DatasetDownloadError(f"downloaded file is malformed: {e}") from None
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return DownloadResult(path=dest, num_problems=len(problems), source=served_by,
                          dataset=info.name)
