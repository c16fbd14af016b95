"""``cure-eval``: evaluate a model (or a hosted API, or a coder + tester pair) the paper's way.

    cure-eval --config=configs/eval.py [--config.<field>=<value> ...]

Every field of configs/eval.py can be overridden. The config is validated before any work
starts; a bad field is one line on stderr naming it (``config.<field>: ...``) and exit code 2; a
failure while evaluating (a dead endpoint, a model that does not load) is one line and exit
code 1 (rollout.contract.cli).
An interrupted run (Ctrl-C, a dead endpoint) resumes when the same command is run again.
"""
from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from rollout import eval_report
from rollout import evaluate as ev
from rollout.contract import cli, protocol
from rollout.contract.config import ConfigError
from rollout.contract.sections import check_data_spec
from rollout.engines.api_engine import ApiConfig, ApiError
from rollout.problems import ProblemFormatError
from rollout.prompts import PromptConfig

PROG = "cure-eval"
_CONFIG: Any = None  # the --config flag, defined by run() (importing this module parses nothing)


def default_config_path() -> str:
    """configs/eval.py of the working directory, else the one beside the installed package."""
    here = pathlib.Path("configs/eval.py")
    if here.exists():
        return str(here)
    beside = pathlib.Path(__file__).resolve().parent.parent / "configs" / "eval.py"
    return str(beside) if beside.exists() else str(here)


def _define_flags() -> None:
    global _CONFIG
    if _CONFIG is None:
        _CONFIG = config_flags.DEFINE_config_file(
            "config", default=default_config_path(),
            help_string="evaluation config file (default: configs/eval.py)")


def parse_bon(value: Any) -> tuple[tuple[int, int], ...]:
    """(n, m) pairs from a list of pairs or a string "NxM,NxM" (also "N:M")."""
    if isinstance(value, str):
        pairs = []
        for item in [s.strip() for s in value.split(",") if s.strip()]:
            parts = item.replace(":", "x").lower().split("x")
            if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
                raise ConfigError(f"config.bon: {item!r} is not NxM (e.g. 16x16)")
            pairs.append((int(parts[0]), int(parts[1])))
        return tuple(pairs)
    try:
        out = tuple((int(n), int(m)) for n, m in value)
    except (TypeError, ValueError):
        raise ConfigError(f"config.bon: expected (n, m) pairs or 'NxM,...', got {value!r}") from None
    return out


def _api(section: Any, *, prefix: str, fallback: Any = None) -> ApiConfig:
    def get(name: str) -> Any:
        v = section.get(name) if name in section else None
        if fallback is not None and name != "model" and v in ("", 0, 0.0, None):
            return fallback.get(name)
        return v

    kw = {"base_url": get("base_url"), "model": get("model"), "key": get("key") or None,
              "key_env": get("key_env") or "OPENAI_API_KEY", "rpm": float(get("rpm") or 0.0)}
    for name in ("max_concurrency", "max_retries", "timeout_s", "send_top_k", "endpoint"):
        v = get(name)
        if v is not None:
            kw[name] = v
    if not kw["model"]:
        raise ConfigError(f"config.{prefix}.model: engine 'api' needs a model name")
    try:
        return ApiConfig(**kw)
    except ValueError as e:
        raise ConfigError(f"config.{prefix}{str(e).removeprefix('api')}") from None


def _spec(engine: str, model: str, tokenizer: str, api: ApiConfig | None, options: dict,
          prefix: str, base_model: str = "") -> ev.ModelSpec:
    try:
        return ev.ModelSpec(engine=engine, model=model, api=api, tokenizer=tokenizer,
                            options=options, base_model=base_model)
    except ValueError as e:
        raise ConfigError(f"config.{prefix}{e}") from None


def specs_from_config(cfg: Any) -> tuple[ev.ModelSpec, ev.ModelSpec | None]:
    """The coder's and (when configured) the separate tester's model specs."""
    options = dict(cfg.engine_options)
    coder = _spec(cfg.engine, cfg.model, cfg.tokenizer,
                  _api(cfg.api, prefix="api") if cfg.engine == "api" else None, options, "",
                  cfg.base_model)
    t = cfg.tester
    if not t.engine:
        return coder, None
    api = _api(t.api, prefix="tester.api", fallback=cfg.api) if t.engine == "api" else None
    return coder, _spec(t.engine, t.model, t.tokenizer, api, options, "tester.", t.base_model)


_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_tokens")


def protocol_settings(cfg: Any) -> tuple[str, dict[str, Any]]:
    """(concrete protocol, settings) of ``cfg.protocol`` for ``cfg.dataset``
    (rollout.contract.protocol): the protocol's values for the fields left unset (None), the
    fields set explicitly as given."""
    explicit = {"max_gt_tests": cfg.sandbox.max_gt_tests,
                "drop_unparsed_tests": cfg.drop_unparsed_tests, "bon": cfg.bon,
                "prompts_mode": cfg.prompts.mode,
                **{k: cfg.sampling.get(k) for k in _SAMPLING_KEYS}}
    try:
        return protocol.expand(cfg.protocol, cfg.dataset, protocol.PROJECT_CURE_EVAL, explicit)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None


def build(cfg: Any) -> dict[str, Any]:
    """Every object the evaluation needs, validated (raises ConfigError naming the field)."""
    coder, tester = specs_from_config(cfg)
    name, ps = protocol_settings(cfg)
    if cfg.single_eval and cfg.bon is None:
        ps["bon"] = ()  # code only: no tests to rank codes with (unless pairs (n, 0) are given)
    try:
        settings = ev.EvalSettings(k_code=cfg.k_code, k_case=cfg.k_case,
                                   bon=parse_bon(ps["bon"]), single_eval=cfg.single_eval,
                                   max_gt_tests=ps["max_gt_tests"],
                                   drop_unparsed_tests=ps["drop_unparsed_tests"], protocol=name,
                                   gen_batch=cfg.gen_batch, exec_batch=cfg.exec_batch)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None
    try:
        fields = {k: v for k, v in dict(cfg.sampling).items() if v is not None}
        fields.update({k: ps[k] for k in _SAMPLING_KEYS})
        sampling = ev.eval_sampling(**fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.{e}") from None
    p = cfg.prompts
    try:
        prompts = PromptConfig(mode=ps["prompts_mode"], code_template=p.code_template or None,
                               test_template=p.test_template or None,
                               raw_template=p.raw_template or None,
                               repair_template=p.repair_template or None,
                               system_prompt=p.system_prompt or None,
                               show_example_in_test_prompt=p.show_example_in_test_prompt)
    except ValueError as e:
        raise ConfigError(f"config.prompts.{str(e).removeprefix('PromptConfig.')}") from None
    if not cfg.out_dir:
        raise ConfigError("config.out_dir: must be set")
    try:
        refine = ev.RefineSettings(**dict(cfg.refine))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.{e}") from None
    if refine.rounds and cfg.single_eval:
        raise ConfigError("config.refine.rounds: the refinement rounds need generated tests; "
                          "single_eval samples none")

    sb = cfg.sandbox

    def sandbox_factory():
        from sandbox import Limits, Sandbox

        return Sandbox(workers=sb.workers or None, isolation=sb.isolation,
                       limits=Limits(time_multiplier=sb.time_multiplier, memory_mb=sb.memory_mb))

    try:
        from sandbox import Limits

        Limits(time_multiplier=sb.time_multiplier, memory_mb=sb.memory_mb)
    except ValueError as e:
        raise ConfigError(f"config.sandbox.{str(e).removeprefix('Limits.')}") from None
    return {"coder": coder, "tester": tester, "settings": settings, "sampling": sampling,
                "prompt_config": prompts, "refine": refine, "sandbox_factory": sandbox_factory}


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        cli.exit_error(PROG, f"unexpected arguments {' '.join(argv[1:])!r}; use "
                       "--config.<field>=<value>", cli.EXIT_USAGE)
    cfg = _CONFIG.value
    try:
        with cli.errors(PROG, usage=(FileNotFoundError,),
                        failure=(ev.EvalError, ApiError, ProblemFormatError)):
            parts = build(cfg)
            check_data_spec(cfg.dataset, "config.dataset")
            datasets = ev.resolve_datasets(cfg.dataset, data_dir=cfg.data_dir,
                                           max_problems=cfg.max_problems)
            result = ev.evaluate(datasets, parts.pop("coder"), cfg.out_dir,
                                 progress=cfg.progress, **parts)
    except KeyboardInterrupt:
        print(f"cure-eval: interrupted; samples so far are in {cfg.out_dir}/{ev.SAMPLES_FILE}; "
              "run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    out = pathlib.Path(cfg.out_dir)
    if cfg.tensorboard_dir:
        n = ev.write_summaries(result, cfg.tensorboard_dir, cfg.tensorboard_step)
        print(f"wrote {n} scalars to {cfg.tensorboard_dir} at step {cfg.tensorboard_step}")
    print((out / eval_report.TABLE_FILE).read_text(), end="")
    plots = [eval_report.PLOT_FILE] + ([eval_report.REFINE_PLOT_FILE]
                                       if any("refine" in r for r in result.values()) else [])
    print(f"wrote {', '.join(str(out / f) for f in (eval_report.METRICS_FILE, eval_report.TABLE_FILE, *plots))} "
          f"({sum(r['n_problems'] for r in result.values())} problems)")


def _explain_flag_error(argv: list[str], e: Exception) -> str:
    msg = str(e).strip("\"'")
    if isinstance(e, (AttributeError, KeyError)):
        return f"unknown config field {msg!r} (see configs/eval.py)"
    return msg


def run() -> None:
    """Console-script entry point (``cure-eval``)."""
    try:
        _define_flags()
    except (OSError, ImportError, SyntaxError, AttributeError, flags.Error) as e:
        cli.exit_error(PROG, f"cannot load the default config {default_config_path()}: {e}",
                       cli.EXIT_USAGE)
    app.run(main, flags_parser=cli.flags_parser(PROG, flags.FLAGS, _explain_flag_error))


if __name__ == "__main__":
    run()
