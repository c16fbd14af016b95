"""TensorBoard summaries without TensorFlow (tensorboardX event files), written by process 0 only.

Other processes get a writer whose methods do nothing, so the training loop calls it
unconditionally. Files are flushed every `flush_secs` and on `flush()`/`close()`;
`tensorboard --logdir=<workdir>/tb` reads them.
"""
from __future__ import annotations

import pathlib
from collections.abc import Mapping

import jax
import numpy as np


class SummaryWriter:
    """Scalars, histograms and text to `<logdir>` on process 0; a no-op elsewhere."""

    def __init__(self, logdir: str | pathlib.Path, *, flush_secs: int = 10, enabled: bool | None = None):
        self.enabled = (jax.process_index() == 0) if enabled is None else enabled
        self.logdir = pathlib.Path(logdir)
        self._writer = None
        if self.enabled:
            from tensorboardX import SummaryWriter as _TBX
            self.logdir.mkdir(parents=True, exist_ok=True)
            self._writer = _TBX(logdir=str(self.logdir), flush_secs=flush_secs)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """One scalar per tag, e.g. {"loss/pg": 0.1, "perf/tokens_per_s": 1e4}."""
        if self._writer is None:
            return
        for tag, v in values.items():
            self._writer.add_scalar(tag, float(v), global_step=int(step))

    def histogram(self, step: int, tag: str, values) -> None:
        """Histogram of a flat array (NaN/inf dropped; nothing written if empty)."""
        if self._writer is None:
            return
        arr = np.asarray(values, dtype=np.float64).ravel()
        arr = arr[np.isfinite(arr)]
        if arr.size:
            self._writer.add_histogram(tag, arr, global_step=int(step), bins="auto")

    def text(self, step: int, tag: str, text: str) -> None:
        if self._writer is None:
            return
        self._writer.add_text(tag, text, global_step=int(step))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
