"""The models of a cure-eval run (rollout.eval_models): spec validation, Orbax checkpoints
turned into HF directories with cure-convert, and the local-engine factory's errors."""
from __future__ import annotations

import pathlib
import subprocess

import pytest

from rollout import eval_models
from rollout.eval_models import ModelSpec, default_engine_factory, ensure_hf_model
from rollout.eval_settings import EvalError


def test_model_spec_validation_names_the_field():
    with pytest.raises(ValueError, match=r"^model:"):
        ModelSpec(engine="vllm")
    with pytest.raises(ValueError, match=r"^engine: expected one of"):
        ModelSpec(engine="tpu", model="/m")
    with pytest.raises(ValueError, match=r"^api: engine 'api' needs"):
        ModelSpec(engine="api")


def test_engine_factory_rejects_unknown_options_before_starting_anything(tmp_path):
    with pytest.raises(EvalError, match=r"^engine_options: .*unknown field"):
        default_engine_factory(ModelSpec(engine="hf", model=str(tmp_path),
                                         options={"no_such_option": 1}))


def test_an_orbax_checkpoint_without_cure_convert_is_a_clear_error(tmp_path, monkeypatch):
    ckpt = tmp_path / "step_10"
    (ckpt / "params").mkdir(parents=True)
    monkeypatch.setattr(eval_models, "_convert_command", lambda: None)
    with pytest.raises(EvalError, match="Orbax checkpoint and converting it needs the "
                                           "cure-convert command"):
        ensure_hf_model(str(ckpt))
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    assert ensure_hf_model(str(hf)) == str(hf)
    with pytest.raises(EvalError, match="does not exist"):
        ensure_hf_model(str(tmp_path / "missing"))


@pytest.mark.slow
def test_an_orbax_checkpoint_is_converted_with_cure_convert(tmp_path):
    """A real Orbax checkpoint (written by cure-convert hf-to-orbax) becomes a HF directory
    holding the same weights; a broken checkpoint is a one-line error."""
    import numpy as np
    from safetensors.numpy import load_file

    from tests.helpers.tiny_models import make_tiny_hf_dir

    hf = make_tiny_hf_dir(tmp_path)
    exe = eval_models._convert_command()
    assert exe is not None, "cure-convert is not installed next to this interpreter"
    ckpt = tmp_path / "ckpt"
    r = subprocess.run([exe, "hf-to-orbax", f"--hf_dir={hf}", f"--ckpt_dir={ckpt}"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    out = ensure_hf_model(str(ckpt), tmp_path / "converted", base_model=str(hf))
    assert out == str(tmp_path / "converted")
    want = {k: v for f in hf.glob("*.safetensors") for k, v in load_file(f).items()}
    got = {k: v for f in pathlib.Path(out).glob("*.safetensors") for k, v in load_file(f).items()}
    assert set(got) == set(want)
    for k, v in want.items():
        np.testing.assert_array_equal(got[k].astype(np.float32), v.astype(np.float32))
    assert ensure_hf_model(str(ckpt), tmp_path / "converted") == out  # converted once
    bad = tmp_path / "bad"
    (bad / "params").mkdir(parents=True)
    with pytest.raises(EvalError, match=r"with cure-convert failed \(exit \d+\): "):
        ensure_hf_model(str(bad), tmp_path / "bad.hf")
