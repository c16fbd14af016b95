"""rollout.contract.checkpoint_layout: our Orbax layouts are recognised (and HF directories
are not), the parameters are found in each, and the module imports the standard library only."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from rollout.contract import checkpoint_layout as layout


def _train_run(root: pathlib.Path, steps=(2, 10)) -> pathlib.Path:
    for s in steps:
        (root / layout.CHECKPOINTS_DIR / str(s) / layout.STATE_ITEM).mkdir(parents=True)
        (root / layout.CHECKPOINTS_DIR / str(s) / layout.DRIVER_ITEM).mkdir()
    return root


def test_layouts_are_recognised_and_hf_dirs_are_not(tmp_path):
    params_only = tmp_path / "po"
    (params_only / "params").mkdir(parents=True)
    run = _train_run(tmp_path / "run")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    for d in (params_only, run, run / "checkpoints", run / "checkpoints" / "10"):
        assert layout.is_orbax_checkpoint(d), d
    assert layout.is_hf_dir(hf) and not layout.is_orbax_checkpoint(hf)
    (tmp_path / "empty").mkdir()
    assert not layout.is_orbax_checkpoint(tmp_path / "empty")
    assert layout.is_step_dir(run / "checkpoints" / "2") and not layout.is_step_dir(run)
    assert layout.checkpoint_steps(run / "checkpoints") == [2, 10]
    assert layout.step_dir(run / "checkpoints", 2) == run / "checkpoints" / "2"


def test_find_params_in_every_layout(tmp_path):
    (tmp_path / "po" / "params").mkdir(parents=True)
    assert layout.find_params(tmp_path / "po") == ((tmp_path / "po" / "params").absolute(), ())
    run = _train_run(tmp_path / "run").absolute()
    newest = (run / "checkpoints" / "10" / "state", ("params",))
    assert layout.find_params(run) == newest
    assert layout.find_params(run / "checkpoints") == newest
    assert layout.find_params(run / "checkpoints" / "10") == newest
    assert layout.find_params(run, step=2) == (run / "checkpoints" / "2" / "state", ("params",))
    (run / "checkpoints" / "7").mkdir()  # no state/: an unfinished step is not offered
    with pytest.raises(layout.LayoutError, match=r"no step 7 \(available: \[2, 10\]\)"):
        layout.find_params(run, step=7)
    with pytest.raises(layout.LayoutError, match="no Orbax checkpoint here"):
        layout.find_params(tmp_path / "po" / "params")
    with pytest.raises(layout.LayoutError, match="checkpoint directory not found"):
        layout.find_params(tmp_path / "missing")


def test_imports_only_the_standard_library():
    code = ("import sys; before = set(sys.modules); "
            "import rollout.contract.checkpoint_layout; "
            "new = sorted(m.split('.')[0] for m in set(sys.modules) - before); "
            "bad = [m for m in new if m not in sys.stdlib_module_names and m != 'rollout']; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       check=False, cwd=str(pathlib.Path(__file__).resolve().parents[3]))
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
