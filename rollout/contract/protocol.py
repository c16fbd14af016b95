"""Evaluation protocols: named bundles of the settings that decide what an evaluation number means.

Two conventions exist for the same metrics, and numbers are only comparable within one:

``paper``: the reference's evaluation (the authors' ``evaluation/eval.py`` and the evaluation
  during their training; reference/cure.md), which the paper's tables come from:

  - ``max_gt_tests = 8``: the first 8 ground-truth tests of a problem (all when it has fewer);
  - ``drop_unparsed_tests = True``: a generated test that does not parse is dropped before
    execution, so it counts neither in the unit-test accuracy's denominator nor in the BoN test
    prefix (BoN(n, m) ranks the codes on the first m *parsed* tests); a problem whose tests all
    fail to parse is not scored (``problems_without_parsed_test``); a code that does not parse
    is a wrong code everywhere, p_01 / p_00 included (the reference runs a placeholder program
    for it);
  - BoN pairs: the reference's (4, 4) and (16, 16), added (first) to the component's own
    list: cure-eval (4,4) (1,16) (4,16) (8,16) (16,16) (16,1) (16,4) (16,8), the evaluation
    during training (4,4) (1,16) (16,16);
  - sampling: temperature 0.8, top_p 0.95, top_k 40, ``max_tokens = 10000``;
  - ``prompts.mode = "reference"``: the reference's own raw prompt format
    (``rollout/templates/reference_*.jinja``; cure-eval only, see below).

``project``: this project's conventions (the values each component had before protocols):

  - every ground-truth test (``max_gt_tests = 0``);
  - ``drop_unparsed_tests = False``: every sampled test counts; an unparsed test passes
    nothing, so it is an inaccurate test in the unit-test denominator and a column of the BoN
    prefix; an unparsed code is a wrong code but no party to p_01 / p_00 (no program);
  - cure-eval: BoN (1,16) (4,16) (8,16) (16,16) (16,1) (16,4) (16,8), ``max_tokens = 4096``,
    ``prompts.mode = "auto"`` (the chat template when the tokenizer has one);
    the evaluation during training: BoN (1,16) (16,16), ``max_tokens = 2048``;
  - sampling otherwise the paper's (temperature 0.8, top_p 0.95, top_k 40).

``auto`` (the default): ``paper`` when every dataset of the data spec is one of the paper's
evaluation sets (:data:`PAPER_DATASETS`, by hub name or by a file or directory so named, e.g.
``data/LiveBench.json``), else ``project``.

A protocol only fills the fields left unset (None): a field given explicitly always wins. The
evaluation during training takes its prompts from ``rollout.prompts`` (the prompts the policy
is trained with), not from the protocol. Whatever the protocol, the metrics carry both
unit-test accuracies (``unit_test_accuracy_all_tests`` and
``unit_test_accuracy_parsed_tests``; ``unit_test_accuracy`` is the protocol's).

Standard library only (the contract: cure-train validates the ``eval`` section with it).
"""
from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

__all__ = [
    "PAPER",
    "PAPER_DATASETS",
    "PROJECT_CURE_EVAL",
    "PROJECT_TRAINING_EVAL",
    "PROTOCOLS",
    "REFERENCE_BON",
    "expand",
    "is_paper_dataset",
    "resolve",
    "settings",
]

PROTOCOLS = ("auto", "paper", "project")
# The paper's evaluation sets (rollout.hub names; CodeContests_train is the training set).
PAPER_DATASETS = ("CodeContests", "CodeForces", "MBPP", "LiveBench", "LiveCodeBench")
REFERENCE_BON: tuple[tuple[int, int], ...] = ((4, 4), (16, 16))

# What "paper" sets (besides adding REFERENCE_BON to the component's BoN pairs).
PAPER: dict[str, Any] = {
    "max_gt_tests": 8, "drop_unparsed_tests": True,
    "temperature": 0.8, "top_p": 0.95, "top_k": 40, "max_tokens": 10000,
    "prompts_mode": "reference",
}
# What "project" sets, per component.
PROJECT_CURE_EVAL: dict[str, Any] = {
    "max_gt_tests": 0, "drop_unparsed_tests": False,
    "temperature": 0.8, "top_p": 0.95, "top_k": 40, "max_tokens": 4096,
    "bon": ((1, 16), (4, 16), (8, 16), (16, 16), (16, 1), (16, 4), (16, 8)),
    "prompts_mode": "auto",
}
PROJECT_TRAINING_EVAL: dict[str, Any] = {
    "max_gt_tests": 0, "drop_unparsed_tests": False,
    "temperature": 0.8, "top_p": 0.95, "top_k": 40, "max_tokens": 2048,
    "bon": ((1, 16), (16, 16)),
}


def is_paper_dataset(item: str) -> bool:
    """Whether one data-spec item names a paper evaluation set: a hub name (case-insensitive,
    an optional "-ReasonFlux" or "_test" suffix) or a file / directory whose name is one."""
    item = item.strip()
    if not item or item.startswith(("embedded:", "embedded-")):
        return False
    name = pathlib.PurePath(item).name.lower()
    for ext in (".jsonl", ".json"):
        name = name.removesuffix(ext)
    for suffix in ("-reasonflux", "_test"):
        name = name.removesuffix(suffix)
    return name in {d.lower() for d in PAPER_DATASETS}


def resolve(protocol: str, data_spec: str | None = None) -> str:
    """The concrete protocol ("paper" or "project") of ``protocol`` for the datasets of
    ``data_spec`` (a comma-separated data spec; None or empty: not a paper dataset)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: must be one of {PROTOCOLS} (got {protocol!r})")
    if protocol != "auto":
        return protocol
    items = [s for s in (data_spec or "").split(",") if s.strip()]
    return "paper" if items and all(is_paper_dataset(s) for s in items) else "project"


def settings(protocol: str, project: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of concrete ``protocol`` for a component whose own ("project") settings are
    ``project``: those, or the paper's over them (the same keys; BoN pairs: the reference's
    missing from the component's list first, then the component's)."""
    if protocol == "project":
        return dict(project)
    if protocol != "paper":
        raise ValueError(f"protocol: expected 'paper' or 'project' (got {protocol!r})")
    out = dict(project)
    out.update({k: v for k, v in PAPER.items() if k in project})
    if "bon" in project:
        own = [tuple(b) for b in project["bon"]]
        out["bon"] = tuple([b for b in REFERENCE_BON if b not in own] + own)
    return out


def expand(protocol: str, data_spec: str | None, project: Mapping[str, Any],
           explicit: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(concrete protocol, settings): :func:`settings` of the resolved ``protocol``, with every
    field of ``explicit`` that is not None (set by the user) kept as given."""
    name = resolve(protocol, data_spec)
    out = settings(name, project)
    unknown = sorted(set(explicit) - set(out))
    if unknown:
        raise ValueError(f"{unknown[0]}: not a protocol setting (known: {', '.join(sorted(out))})")
    out.update({k: v for k, v in explicit.items() if v is not None})
    return name, out
