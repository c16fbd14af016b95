"""PNG curve of CURE runs from their TensorBoard event files (what the README embeds).

    python -m rollout.tasks.plot_run runs/tiny_coder_s0 runs/tiny_coder_s1 --out=curve.png \
        --baseline=0.135

Top: held-out code accuracy, unit-test accuracy and BoN (``eval/*``) per run; bottom: the
training batches' code accuracy and mean code reward (``cure/*``, ``reward/*``, smoothed).
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


def plot_runs(workdirs: list[str], out: str, baseline: float | None = None) -> pathlib.Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for i, wd in enumerate(workdirs):
        s = read_scalars(wd)
        color = f"C{i}"
        name = pathlib.Path(wd).name
        for tag, style in (("eval/code_accuracy", "-o"), ("eval/unit_test_accuracy", "--s")):
            if tag in s:
                steps, vals = zip(*s[tag])
                top.plot(steps, vals, style, color=color, label=f"{name} {tag.split('/')[1]}")
        bon = sorted(t for t in s if t.startswith("eval/bon_"))
        if bon:
            steps, vals = zip(*s[bon[-1]])
            top.plot(steps, vals, ":^", color=color, label=f"{name} {bon[-1].split('/')[1]}")
        for tag, style in (("cure/code_accuracy", "-"), ("reward/code_mean", "--")):
            if tag in s:
                steps, vals = zip(*s[tag])
                bottom.plot(steps, _smooth(list(vals)), style, color=color,
                            label=f"{name} {tag} (smoothed)")
    if baseline is not None:
        top.axhline(baseline, color="k", ls="--", lw=1, label="warm start code accuracy")
    top.set_ylabel("held-out")
    top.set_title("CURE on the tiny coder (held-out synthetic tasks)")
    bottom.set_ylabel("training batches")
    bottom.set_xlabel("step")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = pathlib.Path(out)
    fig.savefig(path, dpi=110)
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
