"""PNG curve of CURE runs from their TensorBoard event files (what the README embeds).

    python -m rollout.plot_run runs/tiny_coder_s0 runs/tiny_coder_s1 --out=curve.png \
        --baseline=0.135

Panels: held-out code accuracy, unit-test accuracy and BoN (``eval/*``), and the training
batches' code accuracy (``cure/code_accuracy``, smoothed); a line per run and their mean.
``--baseline`` draws the warm start's held-out code accuracy as a dashed line.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

__all__ = ["plot_runs", "read_scalars"]


def read_scalars(workdir: str | pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of ``<workdir>/tb`` (or ``workdir`` itself): tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = pathlib.Path(workdir)
    tb = root / "tb" if (root / "tb").is_dir() else root
    if not any(tb.rglob("events.out.tfevents*")):
        raise FileNotFoundError(f"{tb}: no TensorBoard event files")
    out: dict[str, list[tuple[int, float]]] = {}
    for d in sorted({p.parent for p in tb.rglob("events.out.tfevents*")}):
        ea = EventAccumulator(str(d), size_guidance={"scalars": 0})
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in ea.Scalars(tag))
    return {k: sorted(v) for k, v in out.items()}


def _smooth(values: list[float], k: int = 5) -> list[float]:
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1])
            for i in range(len(values))]


PANELS = (("eval/code_accuracy", "held-out code accuracy"),
          ("eval/unit_test_accuracy", "held-out unit-test accuracy"),
          ("eval/bon_", "held-out BoN accuracy"),
          ("cure/code_accuracy", "training batches: code accuracy (smoothed)"))


def _series(s: dict, tag: str) -> list[tuple[int, float]]:
    if tag.endswith("_"):  # the largest BoN pair the run logged
        tags = sorted(t for t in s if t.startswith(tag))
        return s[tags[-1]] if tags else []
    return s.get(tag, [])


def plot_runs(workdirs: list[str], out: str, baseline: float | None = None) -> pathlib.Path:
    """One panel per metric (PANELS): a thin line per run and, with several runs, their mean
    over the steps they all logged (thick). ``baseline`` draws a dashed line on the code panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_scalars(wd) for wd in workdirs]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, (tag, title) in zip(axes.flat, PANELS):
        per_run = []
        for i, (wd, s) in enumerate(zip(workdirs, runs)):
            pts = dict(_series(s, tag))
            if tag.startswith("cure/"):
                pts = dict(zip(pts, _smooth(list(pts.values()))))
            if pts:
                ax.plot(list(pts), list(pts.values()), "-", color=f"C{i}", lw=1, alpha=0.7,
                        label=pathlib.Path(wd).name)
                per_run.append(pts)
        common = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
        if len(per_run) > 1 and common:
            ax.plot(common, [sum(p[k] for p in per_run) / len(per_run) for k in common], "-o",
                    color="k", lw=2, ms=3, label=f"mean of {len(per_run)}")
        if baseline is not None and tag == "eval/code_accuracy":
            ax.axhline(baseline, color="k", ls="--", lw=1, label="warm start")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("CURE step")
    fig.suptitle("CURE on the tiny coder (synthetic tasks)", fontsize=10)
    fig.tight_layout()
    path = pathlib.Path(out)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="plot CURE runs from TensorBoard events")
    ap.add_argument("workdirs", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--baseline", type=float, default=None)
    args = ap.parse_args(argv)
    print(plot_runs(args.workdirs, args.out, args.baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
