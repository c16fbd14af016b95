"""cure-train's config: every section is typed and validated at the door; a bad field or value
is one line naming the dotted field (exit status 2 from the CLI, before any work starts)."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from cure_jax.config import Config, ConfigError, config_module, load_config
from tests.helpers.cure_runs import xla_flags

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name: str):
    return config_module(ROOT / "configs" / f"{name}.py")


def tiny(variant: str | None = None):
    return _load("tiny").get_config(variant)


@pytest.mark.parametrize("variant,source,schedule", [
    (None, "cure", (100, 10, 50)), ("random", "cure", (3, 3, 2)), ("synthetic", "synthetic", (3, 3, 2))])
def test_tiny_config_validates(variant, source, schedule):
    c = tiny(variant)
    s = load_config(c)  # the path cure-train takes before any work
    assert isinstance(s, Config) and s.rollout.source == source
    assert (s.train.steps, s.train.eval_every, s.train.checkpoint_every) == schedule
    qc = s.model.qwen_config()
    assert qc.family == "qwen2" and qc.head_dim >= 32
    assert s.learner.loss_config().tis_cap == 2.0
    assert s.rollout.prompts.show_example_in_test_prompt  # training shows the public example
    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain JSON, as written to <workdir>/config.json
    assert set(d) == {"seed", "model", "mesh", "learner", "train", "rollout", "cure", "data",
                      "sandbox", "eval"}
    assert load_config(d) == s  # what the server's spec carries rebuilds the same sections


def test_reference_faithful_preset():
    presets = _load("learner_presets")
    s = load_config(presets.get_config("reference-faithful"))
    lc = s.learner
    assert (lc.lr, lc.lr_schedule, lc.b1, lc.b2, lc.weight_decay, lc.grad_clip) == (1e-6, "constant", 0.9, 0.95, 0.0, 1.0)
    assert (lc.clip_low, lc.clip_high, lc.kl_coef, lc.kl_estimator, lc.kl_reference) == (0.2, 0.2, 0.01, "k3", "initial")
    assert lc.entropy_coef == 0.0 and lc.agg_mode == "token-mean"
    assert s.model.dtype == "bfloat16" and s.model.param_dtype == "float32"
    with pytest.raises(ValueError, match="unknown learner preset"):
        presets.apply_preset(tiny(), "nope")


# One unknown field, one wrong type and one bad value per section (nested ones included).
BAD = [
    ("seed", "zero", r"^config\.seed: must be an integer \(got 'zero'\)$"),
    ("model.presett", "x", r"^config\.model\.presett: unknown field \(known: .*\bpreset\b"),
    ("model.dtype", 16, r"^config\.model\.dtype: must be a string \(got 16\)$"),
    ("model.dtype", "int8", r"^config\.model\.dtype: must be one of \('float32', 'bfloat16', 'float16'\) \(got 'int8'\)$"),
    ("model.preset", "qwen3-4b", r"^config\.model: give exactly one of preset, hf_dir, arch \(got 2\)$"),
    ("mesh.pp", 2, r"^config\.mesh\.pp: unknown field \(known: data, dcn, device_memory_gb, devices, fsdp, tp\)$"),
    ("mesh.tp", "2x", r"^config\.mesh\.tp: must be an integer \(got '2x'\)$"),
    ("mesh.tp", 0, r"^config\.mesh\.tp: must be >= 1 or -1 \(got 0\)$"),
    ("learner.lrr", 1.0, r"^config\.learner\.lrr: unknown field \(known: "),
    ("learner.lr", -1.0, r"^config\.learner\.lr: must be > 0 \(got -1\.0\)$"),
    ("learner.agg_mode", "mean", r"^config\.learner\.agg_mode: must be one of"),
    ("learner.kl_estimator", "k9", r"^config\.learner\.kl_estimator: must be one of"),
    ("learner.dual_clip", 0.5, r"^config\.learner\.dual_clip: must be 0 \(off\) or > 1"),
    ("learner.ppo_epochs", 0, r"^config\.learner\.ppo_epochs: must be >= 1"),
    ("learner.lr", "fast", r"^config\.learner\.lr: must be a number \(got 'fast'\)$"),
    ("learner.offload_reference", "yes", r"^config\.learner\.offload_reference: must be true or false \(got 'yes'\)$"),
    ("train.keep_checkpoints", 0, r"^config\.train\.keep_checkpoints: must be >= 1"),
    ("train.steps", -1, r"^config\.train\.steps: must be >= 0 \(got -1\)$"),
    ("train.eval_every", -2, r"^config\.train\.eval_every: must be >= 0, 0 disables \(got -2\)$"),
    ("train.eval_every", 1.5, r"^config\.train\.eval_every: must be an integer \(got 1\.5\)$"),
    ("train.num_steps", 3, r"^config\.train\.num_steps: unknown field \(known: .*\bsteps\b"),
    ("rollout.show_example", True, r"^config\.rollout\.show_example: unknown field \(known: "),
    ("rollout.steps", 3, r"^config\.rollout\.steps: unknown field"),
    ("rollout.mode", "sometimes", r"^config\.rollout\.mode: must be one of \('sync', 'async'\)"),
    ("rollout.k_code", 0, r"^config\.rollout\.k_code: must be >= 1 \(got 0\)$"),
    ("rollout.problems_per_step", "4", r"^config\.rollout\.problems_per_step: must be an integer \(got '4'\)$"),
    ("rollout.heartbeat_s", 0, r"^config\.rollout\.heartbeat_s: must be > 0 \(got 0\.0\)$"),
    ("rollout.engine_options.tensor_parallel", 2, r"^config\.rollout\.engine_options\.tensor_parallel: unknown field"),
    ("rollout.engine_options.gpu_memory_utilization", 1.5, r"^config\.rollout\.engine_options\.gpu_memory_utilization: must be in \(0, 1\]"),
    ("rollout.engine_options.in_process", "no", r"^config\.rollout\.engine_options\.in_process: must be true or false"),
    ("rollout.prompts.show_example", False, r"^config\.rollout\.prompts\.show_example: unknown field \(known: .*show_example_in_test_prompt"),
    ("rollout.prompts.mode", "chatml", r"^config\.rollout\.prompts\.mode: must be one of \('auto', 'chat', 'raw', 'reference'\)"),
    ("rollout.prompts.code_template", "/no/such.jinja", r"^config\.rollout\.prompts\.code_template: template file not found: /no/such\.jinja$"),
    ("rollout.synthetic.group_size", 0, r"^config\.rollout\.synthetic\.group_size: must be >= 1"),
    ("rollout.source", "magic", r"^config\.rollout\.source: must be one of"),
    ("cure.scaling", "ratio", r"^config\.cure\.scaling: must be one of \('fraction', 'count', 'binary'\)"),
    ("cure.label_free", 1, r"^config\.cure\.label_free: must be true or false \(got 1\)$"),
    ("cure.long_cot_min_len", 9000.0, r"^config\.cure\.long_cot_min_len: need 0 <= long_cot_min_len <= long_cot_max_len"),
    ("cure.alpha", 1.0, r"^config\.cure\.alpha: unknown field"),
    ("cure.tester.model_path", "/models/tester", r"^config\.cure\.tester\.model_path: a frozen tester's tests reward the codes without ground truth: it needs config\.cure\.label_free=True"),
    ("cure.tester.engine", "api", r"^config\.cure\.tester\.engine: must be one of \('', 'vllm', 'hf'\)"),
    ("data.test", "embedded:eval", r"^config\.data\.test: unknown field \(known: data_dir, eval, train\)$"),
    ("data.train", 3, r"^config\.data\.train: must be a string \(got 3\)$"),
    ("data.train", "/no/such/train.json", r"^config\.data\.train: dataset '/no/such/train\.json' is not a file, a directory, embedded:<split> or a known dataset"),
    ("data.eval", "embedded:test", r"^config\.data\.eval: dataset 'embedded:test': unknown embedded split 'test' \(known: train, eval\)$"),
    ("sandbox.cpus", 2, r"^config\.sandbox\.cpus: unknown field"),
    ("sandbox.memory_mb", 32, r"^config\.sandbox\.memory_mb: must be >= 64"),
    ("sandbox.isolation", "docker", r"^config\.sandbox\.isolation: must be one of"),
    ("sandbox.workers", 1.5, r"^config\.sandbox\.workers: must be an integer \(got 1\.5\)$"),
    ("eval.topk", 3, r"^config\.eval\.topk: unknown field"),
    ("eval.top_p", 2.0, r"^config\.eval\.top_p: must be in \(0, 1\] \(got 2\.0\)$"),
    ("eval.bon", ((8, 4),), r"^config\.eval\.bon: pair \(8, 4\) needs 1 <= n <= k_code and 0 <= m <= k_case$"),
    ("eval.bon", ((1, "x"),), r"^config\.eval\.bon\[0\]\[1\]: must be an integer \(got 'x'\)$"),
    ("eval.max_problems", -1, r"^config\.eval\.max_problems: must be >= 0"),
    ("trainer", {}, r"^config\.trainer: unknown field \(known: cure, data, eval, learner, mesh, model, rollout, sandbox, seed, train\)$"),
]


@pytest.mark.parametrize("dotted,value,expected", BAD)
def test_bad_field_or_value_is_one_line_naming_it(dotted, value, expected):
    d = tiny().to_dict()
    *parents, leaf = dotted.split(".")
    node = d
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(ConfigError, match=expected) as ei:
        load_config(d)  # cure-train's check of the whole config
    assert "\n" not in str(ei.value)


def test_bad_nested_fields():
    d = tiny("random").to_dict()
    d["model"]["arch"]["hidden_sise"] = 3
    with pytest.raises(ConfigError, match=r"^config\.model\.arch\.hidden_sise: unknown field"):
        load_config(d)
    d = tiny("random").to_dict()
    d["model"]["arch"]["num_key_value_heads"] = 3
    with pytest.raises(ConfigError, match=r"^config\.model\.arch\.num_key_value_heads: 3 does not divide"):
        load_config(d)
    d = tiny("random").to_dict()
    d["rollout"]["engine_options"] = "vllm"
    with pytest.raises(ConfigError, match=r"^config\.rollout\.engine_options: must be a section"):
        load_config(d)


def test_data_specs_at_the_door(tmp_path, monkeypatch):
    """Files, directories, embedded splits and hub names (read from data.data_dir) are valid."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.json").write_text("[]")
    (tmp_path / "dir").mkdir()
    d = tiny("random").to_dict()
    for spec in ("mine.json", str(tmp_path / "dir"), "embedded:eval", "LiveBench",
                 "livecodebench", "MBPP-ReasonFlux", "embedded:train,mine.json"):
        d["data"]["train"] = spec
        assert load_config(d).data.train == spec
    d["data"]["train"] = "embedded:train,nope.json"
    with pytest.raises(ConfigError, match=r"^config\.data\.train: dataset 'nope\.json' is not"):
        load_config(d)


def test_preset_needs_the_engine_model_path():
    d = tiny().to_dict()
    d["model"].update(preset="qwen3-4b", hf_dir="")
    with pytest.raises(ConfigError, match=r"^config\.rollout\.model_path: required with "
                                          r"config\.model\.preset"):
        load_config(d)
    d["rollout"]["model_path"] = "/models/qwen3-4b"
    assert load_config(d).model.qwen_config().family == "qwen3"


def _cli(*args, cwd=ROOT):
    env = dict(os.environ, XLA_FLAGS=xla_flags(1))
    return subprocess.run([sys.executable, "-m", "cure_jax.train_main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("override,message", [
    ("--config.learner.lr=-0.5", "config.learner.lr: must be > 0 (got -0.5)"),
    ("--config.data.train=/no/such/train.json",
     ("config.data.train: dataset '/no/such/train.json' is not a file, a directory, "
      "embedded:<split> or a known dataset (CodeContests_train, CodeContests, CodeForces, MBPP, "
      "LiveBench, LiveCodeBench)")),
    ("--config.learner.nope=1", "config.learner.nope: unknown field (command-line override)"),
])
def test_cli_config_error_is_one_line_exit_2_before_any_work(tmp_path, override, message):
    wd = tmp_path / "run"
    r = _cli("--config=configs/tiny.py", f"--workdir={wd}", override)
    assert r.returncode == 2, r.stderr
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert err == [f"cure-train: error: {message}"], r.stderr
    assert not wd.exists()  # validated before any work: no workdir, no rollout server


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


def test_cure_config_errors_name_the_field():
    for path, value, match in [
        ("rollout.mode", "sometimes", r"config\.rollout\.mode: must be one of"),
        ("rollout.engine", "tgi", r"config\.rollout\.engine: must be one of"),
        ("rollout.k_code", 0, r"config\.rollout\.k_code: must be >= 1"),
        ("rollout.problems_per_step", 0, r"config\.rollout\.problems_per_step"),
        ("cure.scaling", "ratio", r"config\.cure\.scaling"),
        ("eval.top_p", 2.0, r"config\.eval\.top_p"),
    ]:
        c = tiny()
        sec, key = path.split(".")
        with c.unlocked():
            c[sec][key] = value
        with pytest.raises(ConfigError, match=match) as err:
            load_config(c)
        assert "\n" not in str(err.value)
    c = tiny()
    with c.unlocked():
        c.rollout.k_cod = 3
    with pytest.raises(ConfigError, match=r"config\.rollout\.k_cod: unknown field"):
        load_config(c)
    for variant in ("", "random"):
        s = load_config(tiny(variant))
        assert s.rollout.mode in ("sync", "async") and s.rollout.engine in ("vllm", "hf")
        assert s.train.steps >= 1
        assert s.train.eval_every > 0  # the default and the random variant evaluate held-out problems
