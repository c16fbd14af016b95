"""``cure-data``: download, list and validate CURE problem datasets.

    cure-data download --dataset=LiveBench --out=data/ [--hub_dir=MIRROR | --revision=REV]
    cure-data list
    cure-data validate PATH              # a .json / .jsonl file or a directory of them

Errors are one line on stderr (no traceback), exit status 2 for a bad command line (unknown
command, flag or dataset name, missing PATH) and 1 when the work fails (the download, or a file
that does not validate): rollout.contract.cli.
"""
from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from rollout import hub, problems
from rollout.contract import cli
from rollout.contract.cli import UsageError

USAGE = ("usage: cure-data download --dataset=NAME --out=DIR [--hub_dir=MIRROR | "
         "--revision=REV] | "
         "cure-data list | cure-data validate PATH")
PROG = "cure-data"

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
    if hub_dir is not None and revision is not None:
        raise UsageError("a revision applies to the hub, not to a local mirror "
                         "(--hub_dir holds one version)")
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


def main(argv: Sequence[str]) -> None:
    """absl main: ``argv[0]`` is the program, the rest are the positional arguments."""
    with cli.errors(PROG, usage=(hub.UnknownDatasetError, FileNotFoundError),
                    failure=(hub.DatasetDownloadError, problems.ProblemFormatError, OSError)):
        print(dispatch(list(argv[1:]), flags.FLAGS))


def run() -> None:
    """Console-script entry point (``cure-data``)."""
    _define_flags(flags.FLAGS)
    app.run(main, flags_parser=cli.flags_parser(PROG, flags.FLAGS,
                                                lambda argv, e: f"{e}; {USAGE}"))


if __name__ == "__main__":
    run()
