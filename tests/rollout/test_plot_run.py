"""rollout.plot_run: the curve of CURE runs drawn from their TensorBoard event files."""
from __future__ import annotations

import pytest


def test_plot_run_reads_event_files_and_writes_a_png(tmp_path):
    pytest.importorskip("tensorboard", reason="plot_run reads events with tensorboard")
    pytest.importorskip("matplotlib", reason="plot_run draws with matplotlib")
    from tensorboardX import SummaryWriter

    from rollout.plot_run import plot_runs, read_scalars

    run = tmp_path / "run"
    w = SummaryWriter(str(run / "tb"))
    for step, acc in ((5, 0.1), (10, 0.2)):
        w.add_scalar("eval/code_accuracy", acc, step)
        w.add_scalar("cure/code_accuracy", acc / 2, step)
    w.close()
    s = read_scalars(run)
    assert [v for _, v in s["eval/code_accuracy"]] == pytest.approx([0.1, 0.2])
    png = plot_runs([str(run)], str(tmp_path / "c.png"), baseline=0.05)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_scalars(tmp_path / "empty")
