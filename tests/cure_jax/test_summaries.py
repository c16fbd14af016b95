"""Summary writer: event files read back with tensorboard's EventAccumulator."""
from __future__ import annotations

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cure_jax.summaries import SummaryWriter


def _load(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_scalars_histograms_text_round_trip(tmp_path):
    w = SummaryWriter(tmp_path / "tb")
    for step in range(3):
        w.scalars(step, {"loss/total": 0.5 - step * 0.1, "perf/tokens_per_s": 100.0 * step})
    w.histogram(2, "dist/advantage", np.array([-1.0, 0.0, 1.0, 2.0, np.nan]))
    w.text(2, "samples/response", "hello <tok 3>")
    w.close()
    acc = _load(tmp_path / "tb")
    tags = acc.Tags()
    assert {"loss/total", "perf/tokens_per_s"} <= set(tags["scalars"])
    vals = [e.value for e in acc.Scalars("loss/total")]
    np.testing.assert_allclose(vals, [0.5, 0.4, 0.3], rtol=1e-6)
    assert [e.step for e in acc.Scalars("perf/tokens_per_s")] == [0, 1, 2]
    assert "dist/advantage" in tags["histograms"]
    h = acc.Histograms("dist/advantage")[0].histogram_value
    assert h.num == 4 and h.min == -1.0 and h.max == 2.0
    text_tags = [t for t in tags["tensors"] if t.startswith("samples/response")]
    assert text_tags, tags
    t = acc.Tensors(text_tags[0])[0]
    assert b"hello <tok 3>" in t.tensor_proto.string_val[0]


def test_disabled_writer_writes_nothing(tmp_path):
    w = SummaryWriter(tmp_path / "tb", enabled=False)
    w.scalars(0, {"a": 1.0})
    w.histogram(0, "h", [1.0])
    w.text(0, "t", "x")
    w.close()
    assert not (tmp_path / "tb").exists()
