"""The reports of ``cure-eval``: metrics.json, the paper-style markdown table, the BoN plot and,
with refinement rounds (rollout.refine), the plot of accuracy by round."""
from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence

from rollout import metrics as cure_metrics

__all__ = ["METRICS_FILE", "PLOT_FILE", "REFINE_PLOT_FILE", "TABLE_FILE", "plot_bon",
           "plot_refine", "render_table", "write_reports"]

METRICS_FILE = "metrics.json"
TABLE_FILE = "results.md"
PLOT_FILE = "bon.png"
REFINE_PLOT_FILE = "refine.png"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100.0 * v:.1f}"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def render_table(metrics: Mapping[str, dict], *, model: str,
                 bon: Sequence[tuple[int, int]], note: str = "") -> str:
    """Markdown: the paper's one-line-per-model summary (UT / Code / BoN of the largest pair),
    a per-dataset table with both unit-test accuracies (UT: the protocol's; then all tests and
    parsed tests), every BoN pair, p_01, p_00 and parse rates, and a table of the accumulate
    accuracies (the share of ground-truth tests passed by the codes, of correct-code checks
    passed by the tests, and of ground-truth tests passed by each BoN pick) with the mean
    response lengths in tokens. "Problems" are the problems scored; ``note`` (the protocol)
    goes under the heading; a note under the tables names the problems not scored (the sandbox
    failed to execute them, or no generated test parsed under the paper's protocol)."""
    keys = [cure_metrics.bon_key(n, m) for n, m in bon]
    head = max(bon, key=lambda nm: (nm[0] * max(nm[1], 1), nm)) if bon else None
    hk = cure_metrics.bon_key(*head) if head else None
    ds = list(metrics)
    lines = [f"## {model}", ""] + ([note, ""] if note else []) + [
             f"UT / Code / BoN {hk or '-'} (%)", "",
             "| Model | " + " | ".join(ds) + " |",
             "|---|" + "---|" * len(ds),
             f"| {model} | " + " | ".join(
                 f"{_pct(metrics[d]['unit_test_accuracy'])}/{_pct(metrics[d]['code_accuracy'])}/"
                 f"{_pct(metrics[d]['bon'].get(hk)) if hk else '-'}" for d in ds) + " |",
             "",
             "| Dataset | Problems | UT | Code | UT all tests | UT parsed tests | "
             + " | ".join(f"BoN {k}" for k in keys)
             + " | p_01 | p_00 | code parsed | test parsed |",
             "|---|" + "---|" * (9 + len(keys))]
    for d in ds:
        r = metrics[d]
        cells = [d, str(r["n_problems"]), _pct(r["unit_test_accuracy"]), _pct(r["code_accuracy"]),
                 _pct(r.get("unit_test_accuracy_all_tests")),
                 _pct(r.get("unit_test_accuracy_parsed_tests"))]
        cells += [_pct(r["bon"].get(k)) for k in keys]
        cells += [_pct(r["p_01"]), _pct(r["p_00"]), _pct(r["code_parse_rate"]),
                  _pct(r["test_parse_rate"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accumulate accuracies (%) and mean response lengths (tokens)", "",
              "| Dataset | Code acc. | UT acc. | " + " | ".join(f"BoN {k} acc." for k in keys)
              + " | code tokens | test tokens |",
              "|---|" + "---|" * (4 + len(keys))]
    for d in ds:
        r = metrics[d]
        acc = r.get("bon_accumulate") or {}
        cells = [d, _pct(r.get("code_accumulate_accuracy")),
                 _pct(r.get("unit_test_accumulate_accuracy"))]
        cells += [_pct(acc.get(k)) for k in keys]
        cells += [_num(r.get("mean_code_length")), _num(r.get("mean_test_length"))]
        lines.append("| " + " | ".join(cells) + " |")
    notes = (("problems_sandbox_error", ("Not scored (the sandbox failed to execute them, "
                                         "SANDBOX_ERROR after a retry)")),
             ("problems_without_parsed_test", ("No generated test parsed (not scored when "
                                               "unparsed tests are dropped, as the paper's "
                                               "protocol does)")))
    lines += _refine_rows(metrics)
    for key, what in notes:
        n_by = {d: int(metrics[d].get(key) or 0) for d in ds}
        if any(n_by.values()):
            lines += ["", f"{what}: " + ", ".join(
                f"{d} {n} problem{'s' * (n != 1)}" for d, n in n_by.items() if n) + "."]
    return "\n".join(lines) + "\n"


def _refine_rows(metrics: Mapping[str, dict]) -> list[str]:
    """The refinement table: a row per round, the pick's accuracy per dataset (and the repair
    requests sent in that round)."""
    ds = [d for d in metrics if metrics[d].get("refine")]
    if not ds:
        return []
    rounds = max(len(metrics[d]["refine"]["accuracy"]) for d in ds)
    lines = ["", "Refinement: accuracy of the pick after each round (%), repair requests sent", "",
             "| Round | " + " | ".join(ds) + " |", "|---|" + "---|" * len(ds)]
    for r in range(rounds):
        cells = ["0 (BoN pick)" if r == 0 else str(r)]
        for d in ds:
            ref = metrics[d]["refine"]
            acc = ref["accuracy"][r] if r < len(ref["accuracy"]) else None
            sent = f" ({ref['repair_requests_by_round'][r - 1]} requests)" if r else ""
            cells.append(_pct(acc) + sent)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


PLOT_PANEL_IN = (5.0, 4.0)  # inches per panel
PLOT_DPI = 100


def plot_bon(metrics: Mapping[str, dict], bon: Sequence[tuple[int, int]], path: str | os.PathLike[str],
             *, title: str = "") -> tuple[int, int]:
    """PNG of BoN accuracy: per dataset, one panel over n (a line per m) and one over m (a line
    per n). Size: ``2 * len(datasets) * 500`` x 400 pixels. Returns (width, height)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ds = list(metrics)
    w, h = PLOT_PANEL_IN
    fig, axes = plt.subplots(1, 2 * len(ds), figsize=(2 * w * len(ds), h), dpi=PLOT_DPI,
                             squeeze=False)
    for j, d in enumerate(ds):
        acc = {(n, m): metrics[d]["bon"].get(cure_metrics.bon_key(n, m)) for n, m in bon}
        for ax, (x_of, line_of, xlabel, lname) in zip(
                axes[0, 2 * j:2 * j + 2], ((0, 1, "n (codes)", "m"), (1, 0, "m (tests)", "n"))):
            groups: dict[int, list[tuple[int, float]]] = {}
            for nm, a in acc.items():
                if a is not None:
                    groups.setdefault(nm[line_of], []).append((nm[x_of], 100 * a))
            for g, pts in sorted(groups.items()):
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{lname}={g}")
            xs = sorted({p[0] for pts in groups.values() for p in pts})
            if xs:
                ax.set_xticks(xs)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("BoN accuracy (%)")
            ax.set_title(f"{d}: BoN over {xlabel.split()[0]}")
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
            if groups:
                ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return int(2 * w * len(ds) * PLOT_DPI), int(h * PLOT_DPI)


def plot_refine(metrics: Mapping[str, dict], path: str | os.PathLike[str], *,
                title: str = "") -> None:
    """PNG of the pick's accuracy by refinement round, a line per dataset."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=PLOT_PANEL_IN, dpi=PLOT_DPI)
    for d, r in metrics.items():
        acc = (r.get("refine") or {}).get("accuracy") or []
        pts = [(i, 100 * a) for i, a in enumerate(acc) if a is not None]
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=d)
            ax.set_xticks([x for x, _ in pts])
    ax.set_xlabel("round (0: BoN pick)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or "accuracy by refinement round", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


def write_reports(metrics: Mapping[str, dict], out_dir: str | os.PathLike[str], *, model: str,
                  bon: Sequence[tuple[int, int]], single_eval: bool = False,
                  note: str = "") -> None:
    """metrics.json, results.md (``note``: a line under its heading), bon.png and, with
    refinement rounds, refine.png in ``out_dir`` (each replaced atomically)."""
    out = pathlib.Path(out_dir)
    tmp = out / (METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / METRICS_FILE)
    tmp = out / (TABLE_FILE + ".tmp")
    tmp.write_text(render_table(metrics, model=model, bon=bon, note=note))
    os.replace(tmp, out / TABLE_FILE)
    tmp = out / ("tmp-" + PLOT_FILE)
    plot_bon(metrics, bon, tmp, title=model + (" (code only)" if single_eval else ""))
    os.replace(tmp, out / PLOT_FILE)
    if any(r.get("refine") for r in metrics.values()):
        tmp = out / ("tmp-" + REFINE_PLOT_FILE)
        plot_refine(metrics, tmp, title=model)
        os.replace(tmp, out / REFINE_PLOT_FILE)
