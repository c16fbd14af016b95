"""The rollout-side config sections of cure-train: ``rollout``, ``cure``, ``data``, ``sandbox``
and ``eval`` (see :mod:`rollout.contract.config` for how sections are built and validated).

They live in the contract because both processes need them: cure-train validates them before
it starts anything (and may import nothing else of ``rollout``), and the rollout server
rebuilds them from its JSON spec (:class:`ServerConfig`). The rollout code uses these same
classes: ``rollout.rewards.RewardConfig``, ``rollout.prompts.PromptConfig`` and the sampling of
``rollout.experience_maker`` are the types below. Standard library only.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, ClassVar

from rollout.contract import protocol
from rollout.contract.config import Section, build, check, fail, one_of, to_dict

__all__ = [
    "EMBEDDED_SPLITS", "HUB_DATASETS", "SERVER_SECTIONS", "DataConfig", "EngineOptions",
    "EvalConfig", "PromptConfig", "RewardConfig", "RolloutConfig", "SamplingFields",
    "SandboxConfig", "ServerConfig", "SyntheticRolloutConfig", "TesterConfig",
    "check_data_spec", "check_sampling",
]

ROLLOUT_SOURCES = ("synthetic", "cure")  # "cure": the rollout server; "synthetic": in-process
MODES = ("sync", "async")
ENGINES = ("vllm", "hf")
WEIGHT_DTYPES = ("float32", "bfloat16", "float16")
ENGINE_DTYPES = ("auto", "float32", "bfloat16", "float16")
PROMPT_MODES = ("auto", "chat", "raw", "reference")
SCALINGS: tuple[str, ...] = ("fraction", "count", "binary")
EPS = 1e-6
ISOLATION = ("auto", "namespaces", "userns", "rlimits")  # sandbox.isolation modes + "auto"
EMBEDDED_SPLITS = ("train", "eval")  # rollout/paper_problems/<split>.json
# Hub datasets a data spec may name (rollout.hub.DATASETS; a test keeps the two in step).
HUB_DATASETS = ("CodeContests_train", "CodeContests", "CodeForces", "MBPP", "LiveBench",
                "LiveCodeBench")
SERVER_SECTIONS = ("rollout", "cure", "data", "sandbox", "eval")


# ------------------------------------------------------------------------------ sampling
def check_sampling(s: Any, p: str, *, greedy_ok: bool) -> None:
    """The sampler fields every sampling config shares: temperature, top_p, top_k, max_tokens."""
    if greedy_ok:
        check(s.temperature >= 0, f"{p}.temperature", f"must be >= 0 (got {s.temperature})")
    else:
        check(s.temperature > 0, f"{p}.temperature",
              f"must be > 0 for sampling (got {s.temperature})")
    check(0 < s.top_p <= 1, f"{p}.top_p", f"must be in (0, 1] (got {s.top_p})")
    check(s.top_k >= 0, f"{p}.top_k", f"must be >= 0, 0 = off (got {s.top_k})")
    check(s.max_tokens >= 1, f"{p}.max_tokens", f"must be >= 1 (got {s.max_tokens})")


@dataclasses.dataclass(frozen=True)
class SamplingFields(Section):
    """What training and evaluation sampling share: samples per problem, the sampler, the seed
    (``rollout.engines.SamplingConfig.of`` turns these into an engine request's sampling)."""

    _greedy_ok: ClassVar[bool] = False  # evaluation may decode greedily; training must sample

    k_code: int = 16
    k_case: int = 16
    max_gt_tests: int = 8           # ground-truth tests run per problem; 0 = all
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                  # 0 = off
    max_tokens: int = 10240
    seed: int = 0                   # base of the per-request seeds; < 0 = unseeded

    def validate(self, p: str) -> None:
        check(self.k_code >= 1, f"{p}.k_code", f"must be >= 1 (got {self.k_code})")
        check(self.k_case >= 1, f"{p}.k_case", f"must be >= 1 (got {self.k_case})")
        check(self.max_gt_tests >= 0, f"{p}.max_gt_tests",
              f"must be >= 0, 0 = all (got {self.max_gt_tests})")
        check_sampling(self, p, greedy_ok=self._greedy_ok)


# ------------------------------------------------------------------------------ rollout
@dataclasses.dataclass(frozen=True)
class EngineOptions(Section):
    """How the rollout engine runs (``rollout.engines.EngineConfig`` less backend, model and
    seed, which cure-train sets). None means the engine's own default."""

    _path: ClassVar[str] = "engine_options"

    dtype: str = "auto"
    tokenizer: str | None = None            # None: the model's own
    max_model_len: int | None = None        # None: the model's own
    tensor_parallel_size: int = 1           # vllm: GPUs per engine
    gpu_memory_utilization: float = 0.9
    # None: CUDA graphs on GPUs (a weight push copies into the captured tensors, see
    # rollout/engines/vllm_worker.py), eager on vLLM's CPU build, which has no graphs.
    enforce_eager: bool | None = None
    enable_prefix_caching: bool = True
    distributed_executor_backend: str | None = None  # vllm: None = its choice; "uni": in-process
    in_process: bool | None = None          # vllm: VLLM_ENABLE_V1_MULTIPROCESSING=0 when True
    kv_cache_gb: int | None = None          # vllm CPU build: KV cache size in whole GB
    enable_chunked_prefill: bool | None = None
    device: str = "auto"                    # hf: "auto" | "cpu" | "cuda" | "cuda:1"

    def validate(self, p: str) -> None:
        one_of(self.dtype, ENGINE_DTYPES, f"{p}.dtype")
        if self.max_model_len is not None:
            check(self.max_model_len >= 1, f"{p}.max_model_len",
                  f"must be >= 1 (got {self.max_model_len})")
        check(self.tensor_parallel_size >= 1, f"{p}.tensor_parallel_size",
              f"must be >= 1 (got {self.tensor_parallel_size})")
        check(0 < self.gpu_memory_utilization <= 1, f"{p}.gpu_memory_utilization",
              f"must be in (0, 1] (got {self.gpu_memory_utilization})")
        if self.kv_cache_gb is not None:
            check(self.kv_cache_gb >= 1, f"{p}.kv_cache_gb", f"must be >= 1 (got {self.kv_cache_gb})")


@dataclasses.dataclass(frozen=True)
class PromptConfig(Section):
    """How prompts are built (``rollout.prompts.PromptBuilder``).

    mode: "chat" (tokenizer chat template), "raw" (``raw_template``), "auto" (chat when the
      tokenizer has a chat template, else raw) or "reference" (the reference's own prompt
      format, verbatim: the code and test templates render the whole prompt, default
      ``rollout/templates/reference_*.jinja``; no chat or raw wrapping).
    code_template / test_template / raw_template / repair_template: paths of the user's own
      Jinja files; None uses the packaged ones in ``rollout/templates/`` (repair: the prompt of
      ``cure-eval``'s refinement rounds, rollout.refine).
    show_example_in_test_prompt: show the public example(s) in the test prompt (training:
      True; evaluation: False). The packaged templates show the first; the reference's, all.
    system_prompt: optional system message (chat; the API's system message in every mode) /
      preamble (raw); the reference's templates carry their own.
    """

    mode: str = "auto"
    code_template: str | None = None
    test_template: str | None = None
    raw_template: str | None = None
    repair_template: str | None = None
    show_example_in_test_prompt: bool = True
    system_prompt: str | None = None

    def validate(self, p: str) -> None:
        one_of(self.mode, PROMPT_MODES, f"{p}.mode")
        for name in ("code_template", "test_template", "raw_template", "repair_template"):
            path = getattr(self, name)
            if path is not None:
                check(os.path.isfile(path), f"{p}.{name}", f"template file not found: {path}")


@dataclasses.dataclass(frozen=True)
class SyntheticRolloutConfig(Section):
    """Seeded in-process experience source that samples from the policy itself and rewards a
    target token (``rollout.source = "synthetic"``, cure_jax.sources.synthetic).

    Prompts are random token ids; each prompt gets `group_size` sampled responses of
    `response_len` tokens; reward = share of response tokens equal to `target_token`,
    z-scored within the group (population std; zero-std groups get advantage 0).
    """

    _path: ClassVar[str] = "rollout.synthetic"

    num_prompts: int = 4
    group_size: int = 4
    prompt_len: int = 8
    response_len: int = 8
    target_token: int = 3
    temperature: float = 1.0

    def validate(self, p: str) -> None:
        for f in ("num_prompts", "group_size", "prompt_len", "response_len"):
            v = getattr(self, f)
            check(v >= 1, f"{p}.{f}", f"must be >= 1 (got {v})")
        check(self.target_token >= 0, f"{p}.target_token", f"must be >= 0 (got {self.target_token})")
        check(self.temperature > 0, f"{p}.temperature", f"must be > 0 (got {self.temperature})")


@dataclasses.dataclass(frozen=True)
class RolloutConfig(SamplingFields):
    """Where experience comes from and how one training step samples it.

    The sampling fields are the reference's (k_code = k_case = 16, temperature 1, top_p 1, at
    most 8 ground-truth tests, 10k new tokens). max_len: longest row (prompt + response) handed
    to the learner, 0 = no cap. seed: base of per-step request seeds (< 0 = unseeded). The
    rest is how cure-train runs and supervises the rollout server (``source = "cure"``).
    """

    _path: ClassVar[str] = "rollout"

    source: str = "synthetic"
    mode: str = "sync"              # sync: on-policy; async: rollouts run max_staleness ahead
    engine: str = "vllm"
    model_path: str = ""            # HF directory or hub id the engine serves
    devices: str = ""               # CUDA_VISIBLE_DEVICES of the rollout server
    problems_per_step: int = 4
    max_staleness: int = 1
    weights_dtype: str = "float32"  # dtype of the weights pushed into the engine
    drop_zero_signal: bool = True   # the learner skips rows whose group carries no signal
    restarts: int = 0               # restarts of a dead or frozen rollout server
    startup_timeout_s: float = 600.0
    step_timeout_s: float = 3600.0
    heartbeat_timeout_s: float = 30.0
    heartbeat_s: float = 0.5
    max_len: int = 0
    engine_options: EngineOptions = dataclasses.field(default_factory=EngineOptions)
    prompts: PromptConfig = dataclasses.field(default_factory=PromptConfig)
    synthetic: SyntheticRolloutConfig = dataclasses.field(default_factory=SyntheticRolloutConfig)

    def validate(self, p: str) -> None:
        super().validate(p)
        one_of(self.source, ROLLOUT_SOURCES, f"{p}.source")
        one_of(self.mode, MODES, f"{p}.mode")
        one_of(self.engine, ENGINES, f"{p}.engine")
        one_of(self.weights_dtype, WEIGHT_DTYPES, f"{p}.weights_dtype")
        for name, lo in (("problems_per_step", 1), ("max_staleness", 1), ("restarts", 0)):
            v = getattr(self, name)
            check(v >= lo, f"{p}.{name}", f"must be >= {lo} (got {v})")
        for name in ("startup_timeout_s", "step_timeout_s", "heartbeat_timeout_s", "heartbeat_s"):
            v = getattr(self, name)
            check(v > 0, f"{p}.{name}", f"must be > 0 (got {v})")
        check(self.max_len >= 0, f"{p}.max_len", f"must be >= 0, 0 = no cap (got {self.max_len})")

    def engine_spec(self, model: str, seed: int) -> dict[str, Any]:
        """The engine config (``rollout.engines.EngineConfig`` fields) serving ``model``."""
        return {"backend": self.engine, "seed": seed, **to_dict(self.engine_options),
                "model": model}


# ------------------------------------------------------------------------------ cure
TESTER_SEED_OFFSET = 7919  # the tester engine's seed: the policy engine's seed + this


@dataclasses.dataclass(frozen=True)
class TesterConfig(Section):
    """A frozen external tester (``cure.tester``), the paper's label-free setting: a second
    engine in the rollout server serves ``model_path`` (e.g. ReasonFlux-Coder-4B) and writes
    the k_case unit tests of every problem; the policy's codes run against them and are
    rewarded label-free (``cure.label_free``, which it requires). The tester is never trained:
    its tests are not rows of the learner's batch and weight pushes never reach its engine.
    Held-out evaluation measures the policy alone (its own codes and tests).

    model_path: HF directory or hub id; "" (default) = no tester, the policy writes its own
      tests. engine: "vllm" | "hf"; "" = ``rollout.engine``. engine_options: as
      ``rollout.engine_options``, for the tester's engine alone; two engines share the rollout
      server's devices, so split ``gpu_memory_utilization`` (or ``kv_cache_gb`` on the vLLM
      CPU build) between them. Its seed is the policy engine's + ``TESTER_SEED_OFFSET``; its
      requests sample with ``rollout``'s test sampling (k_case, temperature, max_tokens, seeds).
    """

    _path: ClassVar[str] = "cure.tester"

    model_path: str = ""
    engine: str = ""
    engine_options: EngineOptions = dataclasses.field(default_factory=EngineOptions)

    def validate(self, p: str) -> None:
        one_of(self.engine, ("",) + ENGINES, f"{p}.engine")

    def engine_spec(self, rollout_engine: str, seed: int) -> dict[str, Any]:
        """The tester's engine config (``rollout.engines.EngineConfig`` fields); ``seed``: the
        policy engine's seed."""
        return {"backend": self.engine or rollout_engine, "seed": seed + TESTER_SEED_OFFSET,
                **to_dict(self.engine_options), "model": self.model_path}


@dataclasses.dataclass(frozen=True)
class RewardConfig(Section):
    """How rewards become advantages (section ``cure``; ``rollout.rewards``).

    scaling: unit-test reward form ("fraction" = reference, "count" = paper, "binary" = any/all).
    label_free: score codes against generated tests instead of ground truth (the policy's own
        tests, or a frozen tester's: ``tester``); training problems may then lack ground-truth
        tests (the statistics that need them cover the problems that have them).
    tester: a frozen external tester model (:class:`TesterConfig`; needs label_free).
    long_cot_tests / long_cot_codes: the long-CoT length-aware advantages (the reference's
        ``enable_efficient``, which shapes codes and tests alike) for that role; needs lengths.
    long_cot_min_len / long_cot_max_len: the clip range of the length threshold T.
    eps: a group whose std is at most eps carries no signal.
    """

    scaling: str = "fraction"
    label_free: bool = False
    long_cot_tests: bool = False
    long_cot_codes: bool = False
    long_cot_min_len: float = 1000.0
    long_cot_max_len: float = 8000.0
    eps: float = EPS
    tester: TesterConfig = dataclasses.field(default_factory=TesterConfig)

    def validate(self, p: str) -> None:
        one_of(self.scaling, SCALINGS, f"{p}.scaling")
        check(self.label_free or not self.tester.model_path, f"{p}.tester.model_path",
              f"a frozen tester's tests reward the codes without ground truth: it needs "
              f"{p}.label_free=True (got {self.tester.model_path!r} with label_free=False)")
        check(0 <= self.long_cot_min_len <= self.long_cot_max_len, f"{p}.long_cot_min_len",
              f"need 0 <= long_cot_min_len <= long_cot_max_len (got {self.long_cot_min_len}, "
              f"{self.long_cot_max_len})")
        check(self.eps >= 0, f"{p}.eps", f"must be >= 0 (got {self.eps})")


# ------------------------------------------------------------------------------ data
def check_data_spec(spec: str, path: str) -> None:
    """A data spec names problems that exist: a comma-separated list of ``embedded:<split>``
    (or ``embedded-<split>``), existing .json/.jsonl files or directories, and hub dataset names
    (read from data_dir, downloaded there when missing). Parsed by ``rollout.datasets``."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    check(bool(items), path, "empty; give embedded:<split>, a file or directory, or a dataset name")
    known = {n.lower() for n in HUB_DATASETS}
    for item in items:
        if item.startswith(("embedded:", "embedded-")):
            split = item[len("embedded:"):]
            check(split in EMBEDDED_SPLITS, path, f"dataset {item!r}: unknown embedded split "
                  f"{split!r} (known: {', '.join(EMBEDDED_SPLITS)})")
        elif not os.path.exists(item) and item.lower().removesuffix("-reasonflux") not in known:
            fail(path, f"dataset {item!r} is not a file, a directory, embedded:<split> or a "
                 f"known dataset ({', '.join(HUB_DATASETS)})")


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """The problems of training and of the held-out evaluation (data specs, see
    :func:`check_data_spec`); hub datasets are read from / downloaded into ``data_dir``."""

    _path: ClassVar[str] = "data"

    train: str = "embedded:train"
    eval: str = "embedded:eval"
    data_dir: str = "data"

    def validate(self, p: str) -> None:
        check_data_spec(self.train, f"{p}.train")
        check_data_spec(self.eval, f"{p}.eval")


# ------------------------------------------------------------------------------ sandbox
@dataclasses.dataclass(frozen=True)
class SandboxConfig(Section):
    """The sandbox pool (``workers``: 0 = one per CPU; ``isolation``) and the resource limits of
    one execution (the fields of ``sandbox.Limits``; a test keeps them in step)."""

    _path: ClassVar[str] = "sandbox"

    workers: int = 0
    isolation: str = "auto"
    time_s: float = 1.0
    memory_mb: int = 1024
    output_mb: float = 16.0
    time_multiplier: float = 1.0
    wall_factor: float = 2.0
    processes: int = 16
    open_files: int = 64
    tmp_mb: int = 32
    input_mb: float = 64.0
    float_tol: float | None = None

    def validate(self, p: str) -> None:
        check(self.workers >= 0, f"{p}.workers", f"must be >= 0, 0 = one per CPU (got {self.workers})")
        one_of(self.isolation, ISOLATION, f"{p}.isolation")
        for name in ("time_s", "memory_mb", "output_mb", "time_multiplier", "wall_factor",
                     "processes", "open_files", "tmp_mb", "input_mb"):
            v = getattr(self, name)
            check(v > 0, f"{p}.{name}", f"must be > 0 (got {v})")
        check(self.wall_factor >= 1, f"{p}.wall_factor", f"must be >= 1 (got {self.wall_factor})")
        check(self.memory_mb >= 64, f"{p}.memory_mb",
              f"must be >= 64, Python needs it (got {self.memory_mb})")
        if self.float_tol is not None:
            check(self.float_tol > 0, f"{p}.float_tol", f"must be > 0 (got {self.float_tol})")

    def limits(self) -> dict[str, Any]:
        """The keyword arguments of ``sandbox.Limits``."""
        return {k: v for k, v in to_dict(self).items() if k not in ("workers", "isolation")}


# ------------------------------------------------------------------------------ eval
@dataclasses.dataclass(frozen=True)
class EvalConfig(SamplingFields):
    """The periodic held-out evaluation, under an evaluation protocol (``protocol``; exactly
    what each sets: :mod:`rollout.contract.protocol`): "paper" (the reference's: the first 8
    ground-truth tests, unparsed generated tests dropped, BoN (4,4) (1,16) (16,16),
    temperature 0.8, top_p 0.95, top_k 40, 10000 new tokens), "project" (every ground-truth
    test, unparsed tests kept, BoN (1,16) (16,16), the same sampling with 2048 new tokens) or
    "auto" (paper when ``data.eval`` names only the paper's evaluation sets, else project).

    The protocol fills the fields left None; a field set explicitly wins. An "auto" section
    holds the project's values until :meth:`resolved` is given the held-out data spec:
    cure-train and the rollout server resolve it at the door with ``data.eval``, so the config
    they write and the rollout server's spec hold the concrete protocol and values. The prompts
    are ``rollout.prompts`` (the policy's), without a public example in the test prompt.
    ``max_problems``: 0 = the whole split."""

    _path: ClassVar[str] = "eval"
    _greedy_ok: ClassVar[bool] = True

    protocol: str = "auto"
    max_gt_tests: int | None = None
    drop_unparsed_tests: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    seed: int = 12345
    bon: tuple[tuple[int, int], ...] | None = None
    max_problems: int = 0

    def __post_init__(self) -> None:
        # The unset fields take the protocol's values ("auto": the project's until resolved);
        # which ones did is remembered, so that resolving "auto" can give them the paper's.
        name = "project" if self.protocol == "auto" else self.protocol
        filled = []
        if name in ("paper", "project"):  # anything else fails validation below
            for k, v in protocol.settings(name, protocol.PROJECT_TRAINING_EVAL).items():
                if getattr(self, k) is None:
                    object.__setattr__(self, k, v)
                    filled.append(k)
        object.__setattr__(self, "_from_protocol", tuple(filled))
        super().__post_init__()

    def resolved(self, data_spec: str | None = None, path: str | None = None) -> EvalConfig:
        """This section with a concrete protocol: "auto" resolved for the held-out data spec
        ``data_spec`` (None: "project"), the fields it filled refilled; errors name ``path``."""
        if self.protocol != "auto":
            return self
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update({k: None for k in self._from_protocol},
                      protocol=protocol.resolve("auto", data_spec))
        return build(EvalConfig, fields, path or self._path)

    def validate(self, p: str) -> None:
        one_of(self.protocol, protocol.PROTOCOLS, f"{p}.protocol")
        super().validate(p)
        for b in self.bon:
            check(1 <= b[0] <= self.k_code and 0 <= b[1] <= self.k_case, f"{p}.bon",
                  f"pair {b} needs 1 <= n <= k_code and 0 <= m <= k_case")
        check(self.max_problems >= 0, f"{p}.max_problems",
              f"must be >= 0, 0 = all (got {self.max_problems})")


# ------------------------------------------------------------------------------ the server's
@dataclasses.dataclass(frozen=True)
class ServerConfig(Section):
    """The sections the rollout server runs with; its JSON spec carries them (as
    ``Config.to_dict()`` writes them) under the same names."""

    _path: ClassVar[str] = "spec"

    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    cure: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    sandbox: SandboxConfig = dataclasses.field(default_factory=SandboxConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "eval", self.eval.resolved(self.data.eval, f"{self._path}.eval"))
        super().__post_init__()

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> ServerConfig:
        """The sections of a rollout-server spec (other keys of the spec are not config)."""
        return cls.from_mapping({k: spec[k] for k in SERVER_SECTIONS if k in spec})

