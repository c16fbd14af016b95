"""``cure-data``: download, list and validate CURE problem datasets.

    cure-data download --dataset=LiveBench --out=data/ [--hub_dir=MIRROR | --revision=REV]
    cure-data list
    cure-data validate PATH              # a .json / .jsonl file or a directory of them

Errors are one line on stderr and exit code 2 (no traceback).
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import app, flags

from rollout import hub, problems

USAGE = ("usage: cure-data download --dataset=NAME --out=DIR [--hub_dir=MIRROR | "
         "--revision=REV] | "
         "cure-data list | cure-data validate PATH")
EXIT_ERROR = 2


class UsageError(Exception):
    """Bad command line; reported as one line."""


def _define_flags(fv: flags.FlagValues) -> None:
    if "hub_dir" in fv:
        return
    flags.DEFINE_string("dataset", None, "dataset to download: " + ", ".join(
        d.name for d in hub.DATASETS.values()) + " (case-insensitive)", flag_values=fv)
    flags.DEFINE_string("out", None, "directory the dataset file <Name>.json is written to",
                        flag_values=fv)
    flags.DEFINE_string("hub_dir", None, "read from a local mirror laid out like the hub "
                        "(<hub_dir>/<owner>/<repo>/<split>/<file>.json) instead of the network",
                        flag_values=fv)
    flags.DEFINE_string("revision", None, "hub branch, tag or commit to download (default: "
                        "main); pin a commit for reproducible data", flag_values=fv)


def cmd_download(dataset: str | None, out: str | None, hub_dir: str | None,
                 revision: str | None = None) -> str:
    """Download one dataset; return the line to print."""
    if not dataset:
        raise UsageError("download needs --dataset=NAME")
    if not out:
        raise UsageError("download needs --out=DIR")
    result = hub.download_dataset(dataset, out, hub_dir=hub_dir, revision=revision)
    return f"wrote {result.path}: {result.num_problems} problems ({result.dataset}, from {result.source})"


def cmd_list() -> str:
    """Known hub datasets (with their candidate locations) and the embedded splits."""
    lines = ["hub datasets (cure-data download --dataset=NAME --out=DIR):"]
    for info in hub.DATASETS.values():
        cands = ", ".join(str(c) for c in hub.candidate_files(info.name))
        lines.append(f"  {info.name:<20} {info.split:<5} {info.description}; tries: {cands}")
    lines.append("embedded datasets (shipped in the package, rollout.problems.embedded_problems):")
    for split in problems.EMBEDDED_SPLITS:
        n = len(problems.embedded_problems(split))
        lines.append(f"  embedded:{split:<11} {n} problems  ({problems.embedded_dir() / (split + '.json')})")
    return "\n".join(lines)


def cmd_validate(path: str) -> str:
    """Load and validate a problem file or directory; return a one-line summary."""
    loaded = problems.load_problems(path)
    n_tests = sum(p.num_tests for p in loaded)
    return f"{path}: {len(loaded)} problems, {n_tests} private tests, all valid"


def dispatch(args: Sequence[str], fv: flags.FlagValues) -> str:
    """Run the subcommand named by the positional ``args``; return what to print."""
    if not args:
        raise UsageError(f"missing command; {USAGE}")
    command, rest = args[0], list(args[1:])
    if command == "download":
        if rest:
            raise UsageError(f"unexpected arguments {' '.join(rest)!r}; {USAGE}")
        return cmd_download(fv.dataset, fv.out, fv.hub_dir, fv.revision)
    if command == "list":
        if rest:
            raise UsageError(f"unexpected arguments {' '.join(rest)!r}; {USAGE}")
        return cmd_list()
    if command == "validate":
        if len(rest) != 1:
            raise UsageError(f"validate needs exactly one PATH; {USAGE}")
        return cmd_validate(rest[0])
    raise UsageError(f"unknown command {command!r}; {USAGE}")


def _fail(message: str) -> None:
    print(f"cure-data: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(EXIT_ERROR)


def main(argv: Sequence[str]) -> None:
    """absl main: ``argv[0]`` is the program, the rest are the positional arguments."""
    try:
        print(dispatch(list(argv[1:]), flags.FLAGS))
    except (UsageError, hub.DatasetDownloadError, problems.ProblemFormatError,
            FileNotFoundError, OSError) as e:
        _fail(str(e))


def _parse_flags(argv: list[str]) -> list[str]:
    """Parse absl flags, turning a flag error into one line and exit code 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(f"{e}; {USAGE}")
        raise  # unreachable: _fail exits


def run() -> None:
    """Console-script entry point (``cure-data``)."""
    _define_flags(flags.FLAGS)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
