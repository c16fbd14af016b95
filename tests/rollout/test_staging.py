"""Weight pushes through reused host buffers (rollout.engines.staging). Pinned memory and CUDA
events need a GPU (benchmarks/device_check.py's weights section pushes through them there); on
a CPU the buffers' bookkeeping runs with plain memory."""
from __future__ import annotations

import torch

from rollout.engines import staging


def test_staged_tensors_keep_their_values_while_the_buffers_are_reused():
    st = staging.PinnedStaging("cpu", slots=2, pin=False)
    push = [("a", torch.arange(10, dtype=torch.float32)),
            ("b", torch.full((3, 4), 1.5, dtype=torch.bfloat16)),
            ("c", torch.arange(40, dtype=torch.int32).reshape(5, 8))]
    # bytes per slot after each push (the slots take turns): slot 0 grows from a (40) to c (160)
    for sizes in ([160, 24], [160, 160]):
        out = list(st.staged(push))  # held together: each must outlive its buffer's reuse
        for (name, t), (got_name, got) in zip(push, out):
            assert got_name == name and got.dtype == t.dtype and torch.equal(got, t)
        assert [b.numel() for b in st._buffers] == sizes
    st.synchronize()


def test_nothing_to_stage_on_a_cpu():
    assert staging.for_device("cpu") is None
    assert staging.for_device(torch.device("cpu")) is None
