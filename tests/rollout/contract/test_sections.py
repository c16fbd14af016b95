"""The rollout-side sections of the contract: validated as cure-train and the server read them,
and kept in step with the code they configure (engines, sandbox limits, datasets)."""
from __future__ import annotations

import dataclasses
import json

import pytest

from rollout.contract.config import ConfigError, build, to_dict
from rollout.contract.sections import (
    EMBEDDED_SPLITS,
    HUB_DATASETS,
    DataConfig,
    EngineOptions,
    EvalConfig,
    RolloutConfig,
    SamplingFields,
    SandboxConfig,
    ServerConfig,
    check_data_spec,
)


def _fields(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def test_the_rollout_side_uses_the_contract_types():
    from rollout import experience_maker, prompts, rewards
    from rollout.contract import sections

    assert rewards.RewardConfig is sections.RewardConfig
    assert prompts.PromptConfig is sections.PromptConfig
    assert experience_maker.RolloutConfig is RolloutConfig
    assert experience_maker.EvalConfig is EvalConfig


def test_engine_options_are_the_engine_config_fields():
    from rollout.engines.base import EngineConfig

    engine = _fields(EngineConfig)
    for name in ("backend", "model", "seed"):  # set by cure-train
        engine.pop(name)
    ours = _fields(EngineOptions)
    assert set(ours) == set(engine)
    assert {k: v for k, v in ours.items() if v != engine[k]} == {}
    spec = RolloutConfig(engine="hf").engine_spec("/m", 3)
    cfg = EngineConfig.from_mapping(spec)
    assert (cfg.backend, cfg.model, cfg.seed, cfg.enforce_eager) == ("hf", "/m", 3, None)


def test_sandbox_section_is_the_limits_fields():
    from sandbox import Limits

    ours = _fields(SandboxConfig)
    assert (ours.pop("workers"), ours.pop("isolation")) == (0, "auto")
    assert ours == _fields(Limits)
    limits = SandboxConfig(memory_mb=512, float_tol=1e-6).limits()
    assert Limits(**limits) == Limits(memory_mb=512, float_tol=1e-6)


def test_sampling_fields_make_the_one_sampling_type():
    from rollout.engines.base import SamplingConfig

    s = SamplingConfig.of(EvalConfig(temperature=0, top_k=5), seed=7, logprobs=False,
                          stop=["</answer>"])
    assert (s.temperature, s.top_p, s.top_k, s.max_tokens, s.seed, s.logprobs, s.stop) == (
        0.0, 0.95, 5, 2048, 7, False, ("</answer>",))
    assert s.greedy
    with pytest.raises(ConfigError, match=r"^sampling\.top_p: must be in \(0, 1\] \(got 0\.0\)$"):
        SamplingConfig.from_mapping({"top_p": 0}, "sampling")
    sampler = {"temperature", "top_p", "top_k", "max_tokens"}
    assert sampler <= set(_fields(SamplingFields)) and sampler <= set(_fields(SamplingConfig))


def test_data_spec_names_are_the_hub_and_embedded_ones():
    from rollout import hub, problems

    assert HUB_DATASETS == tuple(d.name for d in hub.DATASETS.values())
    assert EMBEDDED_SPLITS == problems.EMBEDDED_SPLITS


def test_data_specs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jsonl").write_text("")
    for spec in ("embedded:train", "embedded-eval", "a.jsonl", str(tmp_path), "LiveBench",
                 "livebench-ReasonFlux", "CodeContests_train, a.jsonl"):
        check_data_spec(spec, "config.data.train")
    for spec, message in [
        ("", "empty; give embedded:<split>, a file or directory, or a dataset name"),
        ("b.json", ("dataset 'b.json' is not a file, a directory, embedded:<split> or a known "
                    "dataset (CodeContests_train, CodeContests, CodeForces, MBPP, LiveBench, "
                    "LiveCodeBench)")),
        ("embedded:dev", "dataset 'embedded:dev': unknown embedded split 'dev' (known: train, eval)"),
        ("a.jsonl,HumanEval", "dataset 'HumanEval' is not a file, a directory, embedded:<split>"),
    ]:
        with pytest.raises(ConfigError) as ei:
            check_data_spec(spec, "config.data.train")
        assert str(ei.value).startswith(f"config.data.train: {message}")
    with pytest.raises(ConfigError, match=r"^data\.eval: dataset 'x\.json' is not"):
        DataConfig(eval="x.json")


def test_server_config_from_a_spec_round_trips():
    spec = {"buffer": "b", "channel": "c", "engine": {}, "heartbeat_s": 0.2,
            "rollout": {"k_code": 2, "k_case": 2, "prompts": {"mode": "raw"},
                        "engine_options": {"max_model_len": 64}},
            "eval": {"k_code": 2, "k_case": 1, "bon": [[1, 1], [2, 1]]},
            "sandbox": {"workers": 1}, "cure": {"scaling": "count"}}
    cfg = ServerConfig.from_spec(spec)
    assert (cfg.rollout.k_code, cfg.rollout.prompts.mode, cfg.eval.bon, cfg.cure.scaling) == (
        2, "raw", ((1, 1), (2, 1)), "count")
    assert cfg.data == DataConfig()
    again = ServerConfig.from_spec(json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    with pytest.raises(ConfigError, match=r"^spec\.eval\.bon: pair \(3, 1\) needs"):
        ServerConfig.from_spec({"eval": {"k_code": 2, "bon": [[3, 1]]}})
    with pytest.raises(ConfigError, match=r"^spec\.rollout\.show_example: unknown field"):
        build(ServerConfig, {"rollout": {"show_example": True}}, "spec")
