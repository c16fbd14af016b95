"""Config validation: bad fields/values give one line naming the dotted field; presets validate."""
from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from cure_jax.config import ConfigError, validate_config

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", ROOT / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny(variant: str | None = None):
    return _load("tiny").get_config(variant)


@pytest.mark.parametrize("variant,source,schedule", [
    (None, "cure", (100, 10, 50)), ("random", "cure", (3, 3, 2)), ("synthetic", "synthetic", (3, 3, 2))])
def test_tiny_config_validates(variant, source, schedule):
    from cure_jax import train
    from cure_jax.driver import cure_settings, learner_view
    c = tiny(variant)
    train.validate(c)  # the path cure-train takes before any work (cure: CURE fields too)
    s = validate_config(learner_view(c))
    assert s.rollout_source == source
    assert (s.train.steps, s.train.eval_every, s.train.checkpoint_every) == schedule
    qc = s.model.qwen_config()
    assert qc.family == "qwen2" and qc.head_dim >= 32
    assert s.learner.loss_config().tis_cap == 2.0
    if source == "cure":
        cs = cure_settings(c)
        assert (cs.steps, cs.eval_every) == (s.train.steps, s.train.eval_every)


def test_reference_faithful_preset():
    presets = _load("learner_presets")
    s = validate_config(presets.get_config("reference-faithful"))
    lc = s.learner
    assert (lc.lr, lc.lr_schedule, lc.b1, lc.b2, lc.weight_decay, lc.grad_clip) == (1e-6, "constant", 0.9, 0.95, 0.0, 1.0)
    assert (lc.clip_low, lc.clip_high, lc.kl_coef, lc.kl_estimator, lc.kl_reference) == (0.2, 0.2, 0.01, "k3", "initial")
    assert lc.entropy_coef == 0.0 and lc.agg_mode == "token-mean"
    assert s.model.dtype == "bfloat16" and s.model.param_dtype == "float32"
    with pytest.raises(ValueError, match="unknown learner preset"):
        presets.apply_preset(tiny(), "nope")


@pytest.mark.parametrize("section,field,value,expected", [
    ("learner", "lrr", 1.0, r"^config\.learner\.lrr: unknown field \(known: "),
    ("learner", "lr", -1.0, r"^config\.learner\.lr: must be > 0 \(got -1\.0\)$"),
    ("learner", "agg_mode", "mean", r"^config\.learner\.agg_mode: must be one of"),
    ("learner", "kl_estimator", "k9", r"^config\.learner\.kl_estimator: must be one of"),
    ("learner", "dual_clip", 0.5, r"^config\.learner\.dual_clip: must be 0 \(off\) or > 1"),
    ("learner", "ppo_epochs", 0, r"^config\.learner\.ppo_epochs: must be >= 1"),
    ("learner", "lr", "fast", r"^config\.learner\.lr: must be a number \(got 'fast'\)$"),
    ("mesh", "tp", 0, r"^config\.mesh\.tp: must be >= 1 or -1 \(got 0\)$"),
    ("train", "keep_checkpoints", 0, r"^config\.train\.keep_checkpoints: must be >= 1"),
    ("train", "steps", -1, r"^config\.train\.steps: must be >= 0 \(got -1\)$"),
    ("train", "eval_every", -2, r"^config\.train\.eval_every: must be >= 0, 0 disables \(got -2\)$"),
    ("train", "eval_every", 1.5, r"^config\.train\.eval_every: must be an integer \(got 1\.5\)$"),
    ("train", "num_steps", 3, r"^config\.train\.num_steps: unknown field \(known: .*\bsteps\b"),
])
def test_bad_field_or_value_is_one_line_naming_it(section, field, value, expected):
    from cure_jax import train
    d = tiny().to_dict()
    d[section][field] = value
    with pytest.raises(ConfigError, match=expected) as ei:
        train.validate(d)  # cure-train's check (learner sections, then the CURE loop's)
    assert "\n" not in str(ei.value)


def test_bad_nested_fields():
    d = tiny("random").to_dict()
    d["model"]["arch"]["hidden_sise"] = 3
    with pytest.raises(ConfigError, match=r"^config\.model\.arch\.hidden_sise: unknown field"):
        validate_config(d)
    d = tiny("random").to_dict()
    d["model"]["arch"]["num_key_value_heads"] = 3
    with pytest.raises(ConfigError, match=r"^config\.model\.arch\.num_key_value_heads: 3 does not divide"):
        validate_config(d)
    d = tiny("random").to_dict()
    d["rollout"]["synthetic"]["group_size"] = 0
    with pytest.raises(ConfigError, match=r"^config\.rollout\.synthetic\.group_size: must be >= 1"):
        validate_config(d)
    d = tiny("random").to_dict()
    d["rollout"]["source"] = "magic"
    with pytest.raises(ConfigError, match=r"^config\.rollout\.source: must be one of"):
        validate_config(d)
    d = tiny("random").to_dict()
    d["trainer"] = {}
    with pytest.raises(ConfigError, match=r"^config\.trainer: unknown section"):
        validate_config(d)


def _cli(*args, cwd=ROOT):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, "-m", "cure_jax.train_main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_bad_value_one_line_before_any_work(tmp_path):
    wd = tmp_path / "run"
    r = _cli("--config=configs/tiny.py", f"--workdir={wd}", "--config.learner.lr=-0.5")
    assert r.returncode == 2, r.stderr
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert err[-1] == "cure-train: error: config.learner.lr: must be > 0 (got -0.5)", r.stderr
    assert not wd.exists()  # validated before any work


def test_cli_unknown_override_field_is_named(tmp_path):
    r = _cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.learner.nope=1")
    assert r.returncode != 0
    assert "learner.nope" in r.stderr


@pytest.mark.slow
def test_cli_rollout_server_error_is_one_line(tmp_path):
    """A rollout server that fails at start-up (CURE mode) ends cure-train with one line, exit 1."""
    r = _cli("--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", "--config.rollout.engine=hf",
             f"--config.rollout.model_path={tmp_path / 'no_such_model'}", "--config.train.steps=1",
             "--config.train.eval_every=0")
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert err[-1].startswith("cure-train: error: rollout server (pid "), r.stderr[-3000:]
    assert "start-up failed" in err[-1] and "no_such_model" in err[-1], err[-1]


def test_multihost_detection_from_environment():
    from cure_jax import distributed
    assert not distributed.is_multihost_launch({})
    assert not distributed.is_multihost_launch({"SLURM_NTASKS": "1"})
    assert distributed.is_multihost_launch({"SLURM_NTASKS": "4"})
    assert distributed.is_multihost_launch({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert distributed.initialize(env={}) is False  # single host: a no-op
