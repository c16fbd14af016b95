"""Every shipped config still gives the run it gave when each file restated every field.

``shipped_configs.json`` was dumped from the config files and validators as they were before
the files derived from the dataclass defaults: per config, the value of every field that reached
the run (the learner's settings, the rollout server's sections, the engine config the server
builds, the Qwen architecture). ``load_config`` of today's files must give exactly those values.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from cure_jax.config import config_file, default_config, load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXPECTED = json.loads((pathlib.Path(__file__).with_name("shipped_configs.json")).read_text()
                      .replace("<ROOT>", str(ROOT)))
MODEL_PATH = "/models/policy"  # the Qwen configs need --config.rollout.model_path
# Fields added since, at their defaults.
ADDED = {"data.data_dir": "data", "mesh.devices": "", "mesh.device_memory_gb": 0.0, "mesh.dcn": 1,
         "model.init": "pretrained", "model.scan_layers": False,
         "learner.role_updates": "joint", "learner.share_prompts": False,
         "learner.cpu_dot_fusion": True, "learner.cpu_keep_freed_memory": True,
         "rollout.prompts.repair_template": None,
         "cure.tester": {"model_path": "", "engine": "", "engine_options": {
             "dtype": "auto", "tokenizer": None, "max_model_len": None,
             "tensor_parallel_size": 1, "gpu_memory_utilization": 0.9, "enforce_eager": None,
             "enable_prefix_caching": True, "distributed_executor_backend": None,
             "in_process": None, "kv_cache_gb": None, "enable_chunked_prefill": None,
             "device": "auto"}},
         # the evaluation protocol, resolved at the door ("auto": project off the paper's sets)
         "eval.protocol": "project", "eval.drop_unparsed_tests": False}
# The Qwen presets name the learner's GPUs, and the reference learner updates codes and tests
# separately (learner_presets.py).
PRESET_GPUS = {"mesh.devices": "0,1,2,3"}
SEPARATE = {"learner.role_updates": "separate"}
# The Qwen presets evaluate under the paper's protocol with the reference's prompt format
# (rollout/contract/protocol.py): new fields, and fields whose values it changed.
PAPER_PROTOCOL = {"eval.protocol": "paper", "eval.drop_unparsed_tests": True}
PAPER_CHANGED = {"eval.max_gt_tests": 8, "eval.bon": [[1, 16], [4, 4], [4, 16], [16, 16]],
                 "rollout.prompts.mode": "reference"}
PAPER_MAX_TOKENS = {"eval.max_tokens": 10000}  # qwen3_4b keeps its 16384 (long CoT)
RANDOM_INIT = {"model.init": "random"}  # the tiny random policies ask for their random init
SHARED_PROMPTS = {"learner.share_prompts": True}  # the tiny configs' short responses
# The 7B recipe (and the 4B, which derives from it) rematerialise whole layers since
# `cure-train --dry_run` planned their longest micro-batch (README, "Memory before the run").
FULL_REMAT = {"model.remat_policy": "full"}
# The Qwen recipes scan their 28-48 layers (compile time flat in depth: benchmarks/compile.py).
SCANNED = {"model.scan_layers": True}
# Variants added since: the run of the config they vary, with these fields changed.
DERIVED = {"minibatches4": {"learner.minibatches": 4}}
SHIPPED = [("tiny", None), ("tiny", "random"), ("tiny", "synthetic"),
           ("learner_presets", "reference-faithful"), ("qwen2_5_7b", None),
           ("qwen2_5_14b", None), ("qwen3_4b", None), ("qwen2_5_7b", "minibatches4"),
           ("qwen2_5_14b", "minibatches4"), ("qwen3_4b", "minibatches4")]


def _load(name: str, arg: str | None = None):
    return config_file(ROOT / "configs" / f"{name}.py", arg)


def _effective(name: str, arg: str | None) -> dict:
    """The same view of the run as the fixture, from load_config."""
    from rollout.engines.base import EngineConfig

    c = _load(name, arg)
    if name.startswith("qwen"):
        c.rollout.model_path = MODEL_PATH
    cfg = load_config(c)
    d = cfg.to_dict()
    out = {"seed": d.pop("seed")}
    rollout = d.pop("rollout")
    for sub in ("prompts", "synthetic"):
        out.update({f"rollout.{sub}.{k}": v for k, v in rollout.pop(sub).items()})
    rollout.pop("engine_options")  # compared as the engine config the server builds
    out.update({f"rollout.{k}": v for k, v in rollout.items()})
    for section, fields in d.items():
        out.update({f"{section}.{k}": v for k, v in fields.items()})
    out["model.qwen_config"] = dataclasses.asdict(cfg.model.qwen_config())
    model = cfg.rollout.model_path or cfg.model.hf_dir or "/WORKDIR/policy_init_hf"
    out["engine"] = dataclasses.asdict(
        EngineConfig.from_mapping(cfg.rollout.engine_spec(model, cfg.seed)))
    return json.loads(json.dumps(out))


@pytest.mark.parametrize("name,arg", SHIPPED)
def test_shipped_config_gives_the_same_run(name, arg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the Qwen configs name data/*.json: the door checks they exist
    (tmp_path / "data").mkdir()
    for f in ("CodeContests_train.json", "LiveBench.json"):
        (tmp_path / "data" / f).write_text("[]")
    expected = dict(EXPECTED[f"{name}:{arg}" if arg and arg not in DERIVED else name])
    expected.pop("tiny_model")  # server-spec plumbing derived from model.qwen_config
    expected.update(DERIVED.get(arg, {}))
    if name.startswith("qwen"):
        expected.update({**PAPER_CHANGED, **({} if name == "qwen3_4b" else PAPER_MAX_TOKENS),
                         **FULL_REMAT})
        expected["model.qwen_config"] = {**expected["model.qwen_config"], "remat_policy": "full"}
    # vLLM runs eager only on its CPU build now (None), where every shipped config forced it
    expected["engine"] = {**expected["engine"], "enforce_eager": None}
    got = _effective(name, arg)
    assert got["model.qwen_config"].pop("scan_layers") is name.startswith("qwen")  # added since
    preset = {**PRESET_GPUS, **SEPARATE, **PAPER_PROTOCOL, **SCANNED} if name.startswith("qwen") else \
        SEPARATE if name == "learner_presets" else {}
    for key, value in {**ADDED, **preset, **(SHARED_PROMPTS if name in ("tiny", "learner_presets") else {}),
                       **(RANDOM_INIT if name == "tiny" and arg else {})}.items():
        assert got.pop(key) == value, key
    assert sorted(got) == sorted(expected)
    assert {k: v for k, v in got.items() if v != expected[k]} == {}


def test_warmstart_config_is_the_recipe():
    from cure_jax.warmstart import WarmstartConfig

    c = _load("warmstart")  # + the option added since, off (the shipped coder has none)
    assert c.to_dict() == EXPECTED["warmstart"] | {"corpus_repair_examples": 0}
    assert WarmstartConfig.from_mapping(c) == WarmstartConfig()


def test_default_config_is_the_dataclass_defaults():
    """The base of every config file: each field at its default; None defaults can be set."""
    c = default_config()
    assert c.learner.lr == 1e-6 and c.rollout.k_code == 16 and c.eval.bon is None
    assert c.eval.protocol == "auto"  # the protocol fills the unset eval fields at the door
    assert c.rollout.engine_options.max_model_len is None
    c.rollout.engine_options.max_model_len = 4096  # a typed placeholder, not a None field
    with pytest.raises(TypeError):
        c.rollout.engine_options.max_model_len = "long"
    c.model.preset = "qwen3-4b"
    c.rollout.model_path = MODEL_PATH
    cfg = load_config(c)
    assert cfg.rollout.engine_options.max_model_len == 4096
    assert cfg.eval.protocol == "project" and cfg.eval.bon == ((1, 16), (16, 16))
