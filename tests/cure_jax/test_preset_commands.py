"""Each Qwen preset's documented commands, run as far as real weights are needed, on a tiny
stand-in of its model; and the rule that a pretrained policy never starts from random weights.

The commands are read from the preset's docstring (its indented ``cure-*`` lines), the
``<... dir>`` placeholders replaced by a tiny random Qwen2/Qwen3 saved with transformers.
``cure-data`` is parsed with its own flags (the download needs the network: the file it would
write is stubbed), ``cure-convert`` runs in this process, and ``cure-train`` is parsed as
cure-train parses it (ml_collections config flags), its architecture shrunk to the stand-in's,
validated, and its learner's initial state built: its parameters must be the stand-in's
safetensors, bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shlex
import shutil

import numpy as np
import pytest

from cure_jax.config import ConfigError, config_file, config_module, load_config
from tests.helpers.tiny_models import make_tiny_hf_dir

ROOT = pathlib.Path(__file__).resolve().parents[2]
PRESETS = {"qwen2_5_7b": ("qwen2", False), "qwen2_5_14b": ("qwen2", False),
           "qwen3_4b": ("qwen3", True)}  # preset -> the stand-in's family, tied embeddings
PLACEHOLDER = re.compile(r"<[^<>]*\bdir>")


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {fam: make_tiny_hf_dir(root, fam, tie=tie, seed=11, tokenizer=False,
                                  name=f"{fam}-standin")
            for fam, tie in set(PRESETS.values())}


def documented_commands(name: str) -> list[list[str]]:
    """The indented `cure-...` command lines of configs/<name>.py's docstring, as argv lists."""
    doc = config_module(ROOT / "configs" / f"{name}.py").__doc__
    commands = []
    for line in doc.replace("\\\n", " ").splitlines():
        if line.startswith("    cure-"):
            commands.append(line)
    return commands


def _arch(hf_dir: pathlib.Path) -> dict:
    from cure_jax.models.qwen import QwenConfig

    qc = QwenConfig.from_hf_dir(hf_dir)
    return {f.name: getattr(qc, f.name) for f in dataclasses.fields(qc)
            if f.name not in ("attention_impl", "remat_policy")}


def _data(argv: list[str]) -> None:
    """cure-data: parse the documented flags; stub the file the download would write."""
    from absl import flags

    from rollout import data_main, hub

    fv = flags.FlagValues()
    data_main._define_flags(fv)
    assert fv(argv)[1:] == ["download"], argv
    info = hub.resolve_dataset(fv.dataset)
    out = pathlib.Path(fv.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{info.name}.json").write_text("[]")


def _convert(argv: list[str]) -> None:
    """cure-convert in this process (absl's global flags parsed and reset around it)."""
    from absl import flags

    from cure_jax import convert_main

    flags.FLAGS.unparse_flags()
    try:
        rest = flags.FLAGS(argv)
        try:
            convert_main.main(rest)
        except SystemExit as e:
            pytest.fail(f"{' '.join(argv)} exited {e.code}")
    finally:
        flags.FLAGS.unparse_flags()


def _train_config(argv: list[str], standin: pathlib.Path):
    """cure-train's config as its flags give it, with the architecture of the stand-in."""
    import ml_collections
    from absl import flags
    from ml_collections import config_flags

    from cure_jax.models.qwen import QwenConfig

    fv = flags.FlagValues()
    cfg_flag = config_flags.DEFINE_config_file("config", None, "", flag_values=fv,
                                               lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "", flag_values=fv)
    assert fv(argv) == ["cure-train"] and fv.workdir, argv
    c = cfg_flag.value
    # The stand-in plays the preset's model: same family, tiny shape.
    assert QwenConfig.preset(c.model.preset).family == _arch(standin)["family"]
    c.model.preset = ""
    c.model.arch = ml_collections.ConfigDict(_arch(standin))
    return c


def _assert_params_are(learner, state, hf_dir: pathlib.Path) -> None:
    from safetensors.numpy import load_file

    from cure_jax import hf_io

    want = load_file(str(hf_dir / "model.safetensors"))
    got = dict(hf_io.iter_hf_arrays(learner.model(state.params)))
    assert sorted(got) == sorted(want)
    for n, a in got.items():
        np.testing.assert_array_equal(a, want[n], err_msg=n)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_documented_commands_on_a_stand_in(name, standins, tmp_path, monkeypatch):
    from cure_jax import train as train_lib

    standin = standins[PRESETS[name][0]]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # run from a checkout, as documented
    commands = documented_commands(name)
    trains = [c for c in commands if c.startswith("    cure-train ")]
    assert len(trains) == 2 and any("cure-convert" in c for c in commands), commands
    starts = []
    for line in commands:
        argv = shlex.split(PLACEHOLDER.sub(str(standin), line))
        if argv[0] == "cure-data":
            _data(argv)
        elif argv[0] == "cure-convert":
            _convert(argv)
        else:
            assert argv[0] == "cure-train", argv
            c = _train_config(argv, standin)
            assert c.rollout.model_path == str(standin)
            for f in ("data.train", "data.eval"):  # 7B documents their download; the others
                path = tmp_path / c.data[f.split(".")[1]]  # refer to the 7B recipe
                if not path.exists():
                    assert name != "qwen2_5_7b", f"{f}: no documented command writes {path}"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("[]")
            cfg = load_config(c)
            assert cfg.model.init == "pretrained"
            learner = train_lib.build_learner(cfg)
            state = train_lib.initial_state(learner, cfg)
            _assert_params_are(learner, state, standin)
            starts.append(cfg.model.weights(cfg.rollout.model_path)[0])
    # The plain command converts rollout.model_path on the fly; the other starts from the
    # checkpoint the documented cure-convert wrote.
    assert starts == ["rollout.model_path", "model.init_checkpoint"]


def _tiny(variant: str = ""):
    return config_file(ROOT / "configs" / "tiny.py", variant or None)


def _preset(name: str, model_path: str, arch: dict, arg: str | None = None):
    import ml_collections

    c = config_file(ROOT / "configs" / f"{name}.py", arg)
    c.model.preset = ""
    c.model.arch = ml_collections.ConfigDict(arch)
    c.rollout.model_path = model_path
    c.data.update({"train": "embedded:train", "eval": "embedded:eval"})
    return c


def test_pretrained_without_weights_is_a_one_line_error():
    c = _tiny("synthetic")
    assert c.model.init == "random"
    c.model.init = "pretrained"
    with pytest.raises(ConfigError, match=r"^config\.model\.init: 'pretrained' \(the default\) "
                                          r"needs weights: set config\.model\.init_checkpoint, "
                                          r"config\.model\.hf_dir or config\.rollout\.model_path, "
                                          r"or config\.model\.init=random") as e:
        load_config(c)
    assert "\n" not in str(e.value)
    c.model.init = "sometimes"
    with pytest.raises(ConfigError, match=r"^config\.model\.init: must be one of \('pretrained', "
                                          r"'random'\)"):
        load_config(c)
    c.model.update({"init": "random", "init_checkpoint": "ckpt/x"})
    with pytest.raises(ConfigError, match=r"^config\.model\.init: is 'random' but "
                                          r"config\.model\.init_checkpoint is set"):
        load_config(c)


def test_weights_dir_without_safetensors_is_a_one_line_error(standins, tmp_path):
    from cure_jax import train as train_lib

    standin = standins["qwen2"]
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(standin / "config.json", bare / "config.json")
    cfg = load_config(_preset("qwen2_5_7b", str(bare), _arch(standin)))
    learner = train_lib.build_learner(cfg)
    with pytest.raises(ConfigError, match=rf"^config\.rollout\.model_path: '{re.escape(str(bare))}'"
                                          r" has no \*\.safetensors weights, and the learner "
                                          r"starts from its weights") as e:
        train_lib.initial_state(learner, cfg)
    assert "\n" not in str(e.value) and "config.model.init=random" in str(e.value)
    hub_id = load_config(_preset("qwen2_5_7b", "Qwen/Qwen2.5-7B-Instruct", _arch(standin)))
    with pytest.raises(ConfigError, match=r"^config\.rollout\.model_path: 'Qwen/Qwen2\.5-7B-Instruct'"
                                          r" is not a local directory"):
        train_lib.initial_state(learner, hub_id)
    # model.hf_dir (the learner's own HF directory) comes first, and follows the same rule.
    import ml_collections

    c = _tiny("synthetic")
    c.model.arch = ml_collections.ConfigDict()
    c.model.update({"hf_dir": str(bare), "init": "pretrained"})
    c.rollout.model_path = str(standin)
    cfg = load_config(c)
    assert cfg.model.weights(cfg.rollout.model_path) == ("model.hf_dir", str(bare))
    with pytest.raises(ConfigError, match=r"^config\.model\.hf_dir: .* has no \*\.safetensors"):
        train_lib.initial_state(train_lib.build_learner(cfg), cfg)


def test_random_init_only_by_name(standins, monkeypatch):
    from cure_jax import hf_io
    from cure_jax import train as train_lib

    for variant in ("random", "synthetic"):  # the tiny random policies name it
        cfg = load_config(_tiny(variant))
        assert cfg.model.init == "random" and cfg.model.weights(cfg.rollout.model_path) is None
    cfg = load_config(_tiny("synthetic"))
    learner = train_lib.build_learner(cfg)
    random_state = object()  # the seeded random init itself is tested with the learner
    monkeypatch.setattr(learner, "init_state", lambda: random_state)
    monkeypatch.setattr(hf_io, "load_hf_params", lambda *a, **k: pytest.fail("loaded weights"))
    assert train_lib.initial_state(learner, cfg) is random_state
    # The shipped tiny coder is pretrained: its hf_dir's weights.
    tiny = load_config(_tiny())
    assert tiny.model.init == "pretrained"
    assert tiny.model.weights(tiny.rollout.model_path) == ("model.hf_dir", tiny.model.hf_dir)
    # Asked for by name, a preset starts from random weights even with an engine model.
    standin = standins["qwen2"]
    c = _preset("qwen2_5_7b", str(standin), _arch(standin))
    c.model.init = "random"
    cfg = load_config(c)
    assert cfg.model.weights(cfg.rollout.model_path) is None


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_minibatches4_variant_changes_only_the_minibatches(name):
    c0 = config_file(ROOT / "configs" / f"{name}.py")
    c4 = config_file(ROOT / "configs" / f"{name}.py", "minibatches4")
    d0, d4 = json.loads(c0.to_json()), json.loads(c4.to_json())
    assert d4["learner"].pop("minibatches") == 4 and d0["learner"].pop("minibatches") == 1
    assert d0 == d4
    # The recipe takes one optimizer step per batch (PPO ratio 1); the variant four.
    assert (c0.learner.ppo_epochs, c0.learner.old_logprobs) == (1, "recompute")
    with pytest.raises(ValueError, match="unknown variant 'minibatches3'"):
        config_file(ROOT / "configs" / f"{name}.py", "minibatches3")
